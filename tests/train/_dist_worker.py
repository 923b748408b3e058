"""One rank of the 2-process gloo test (also run with world_size 1 as the reference)."""

import json
import os
import sys

import torch


def conversations(n):
    from aster.data.formats import CODE_INTERPRETER_TOOL, make_call

    out = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        out.append({"messages": [
            {"role": "user", "content": f"What is {a}*{b}?"},
            {"role": "assistant", "content": "<think>\nuse python\n</think>",
             "tool_calls": [make_call(f"x = {a}*{b}\nprint(x)")]},
            {"role": "tool", "content": str(a * b)},
            {"role": "assistant", "content": f"\\boxed{{{a * b}}}"}],
            "tools": [CODE_INTERPRETER_TOOL]})
    return out


def main(rank, world, port, out_dir, strategy):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.sft import encode_dataset, run_sft

    cfg = load_config(None, ["sft.epochs=1", "sft.global_batch_size=8", "sft.micro_batch_size=2",
                             "sft.warmup_ratio=0", "sft.lr=1e-2",
                             f"distributed.strategy={strategy}"])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    backend.init_distributed()
    model_dir = os.path.join(out_dir, "..", "model")
    ctx = make_context(cfg, backend, model_dir, out_dir,
                       MetricsWriter(out_dir, is_main=rank == 0, tensorboard=False))
    data, _ = encode_dataset(ctx.tokenizer, conversations(8), 1024)
    metrics = run_sft(ctx, data)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(ctx.policy, options=StateDictOptions(full_state_dict=True,
                                                                      cpu_offload=True))
    if rank == 0:
        torch.save(state, os.path.join(out_dir, "weights.pt"))
        with open(os.path.join(out_dir, "loss.json"), "w") as f:
            json.dump({"loss": metrics["loss"]}, f)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    world, port, out_dir, strategy = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if world == 1:
        main(0, 1, port, out_dir, strategy)
    else:
        torch.multiprocessing.spawn(main, args=(world, port, out_dir, strategy), nprocs=world)
