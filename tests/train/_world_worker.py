"""The 4-process runner of tests/train/test_world.py, on a stand-in for NCCL.

    python _world_worker.py PORT OUT_DIR MODEL_DIR WORLD

The ranks join a process group whose collective, `ncclish`, is registered the way torch_npu
registers hccl (`Backend.register_backend(..., devices=[...])`) for a non-CPU device type only;
it wraps gloo. torch then refuses any CPU tensor that reaches a collective of a group built
from that name alone ("No backend type associated with device type cpu"), exactly as a group
built with backend="nccl" does. aster's trainer all-reduces CPU token counts and gathers Python
objects, so this is the NCCL/HCCL failure on a CPU-only box.

Rank work (FSDP2, the default with more than one rank), every collective family the trainer
issues: the run-directory broadcast (prepare_run_dir), 2 SFT steps over a global batch of 8
(run_sft: token counts, FSDP2 gathers and reduce-scatters, checkpoint RNG gathering), a
checkpoint reload, then one GRPO step of 8 prompts x 2 samples in 2 mini batches
(learn_from_rollouts: the balanced plan's length all-reduce and trajectory all_to_all, old
log-probs, policy_update), the rollout metrics (trajectory_stats), the per-prompt records
(all_gather_object) and the replay record's token quantities. Rank 0 writes result.json and
weights.pt to OUT_DIR/ranks; the single-process reference (strategy none, the same global
batches) writes them to OUT_DIR/reference.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))

from tests.train._dist_worker import conversations  # noqa: E402

PROMPTS, GROUP, MINI = 8, 2, 4  # 2 mini batches; on 4 ranks 1 prompt per rank per mini batch
# one trajectory per micro batch (a token budget of 1), the layout the weight tolerance in
# test_world.py was measured with: AdamW's near-sign first step at lr 1e-2 turns summation-order
# noise in near-zero gradient elements into large moves of single weights, and other groupings
# change that order (packing across ranks: tests/train/test_balance_ranks.py)
OVERRIDES = ["sft.epochs=1", "sft.global_batch_size=8", "sft.micro_batch_size=1",
             "sft.warmup_ratio=0", "sft.lr=1e-2", "logging.tensorboard=false",
             f"rl.prompts_per_step={PROMPTS}", f"rl.mini_batch_prompts={MINI}",
             f"rl.group_size={GROUP}", "rl.ppo_epochs=1", "rl.max_tokens_per_micro_batch=1",
             "rl.lr=1e-2", "checkpoint.keep_last=1"]


def register_ncclish() -> None:
    """`ncclish`: gloo underneath, declared for cuda tensors only (as nccl is)."""
    from torch.distributed import Backend, ProcessGroupGloo

    Backend.register_backend("ncclish", lambda store, rank, size, timeout: ProcessGroupGloo(
        store, rank, size, timeout), devices=["cuda"])


def ncclish_backend():
    """The CPU backend with the stand-in as its collective (CPU tensors are all it has)."""
    from aster.backend import set_current_backend
    from aster.backends.cpu.backend import CPUBackend

    class NcclishCPUBackend(CPUBackend):
        dist_backend = "ncclish"

    backend = NcclishCPUBackend(kernel_impl="chunked", engine="hf")
    set_current_backend(backend)
    return backend


def trajectories(vocab: int) -> list:
    """PROMPTS x GROUP trajectories, uneven lengths, masked tool tokens, mixed rewards."""
    from aster.rollout.agent import Trajectory

    gen = torch.Generator().manual_seed(0)
    out = []
    for p in range(PROMPTS):
        prompt = torch.randint(3, vocab, (4 + p % 3,), generator=gen).tolist()
        for g in range(GROUP):
            n = 5 + (2 * p + 3 * g) % 7
            out.append(Trajectory(
                prompt_ids=prompt, reward=float((p + g) % 2 if p % 4 else 1.0),
                loss_mask=[0 if 2 <= i < 4 else 1 for i in range(n)],
                response_ids=torch.randint(3, vocab, (n,), generator=gen).tolist(),
                rollout_logprobs=[0.0] * n, num_tool_calls=p % 3, finish_reason="stop",
                prompt_index=p, sample_index=g))
    return out


def reference_order(world: int) -> list[int]:
    """Prompt order for one process that gives the mini batches `world` ranks train on: rank r
    holds prompts [r*P/W, (r+1)*P/W) and its m-th mini batch takes the m-th slice of them."""
    per_rank, per_mini = PROMPTS // world, MINI // world
    return [r * per_rank + m * per_mini + i for m in range(PROMPTS // MINI)
            for r in range(world) for i in range(per_mini)]


def run(backend, rank: int, world: int, out: Path, model_dir: str, prompts: list[int]) -> None:
    """SFT, checkpoint reload and a GRPO step on this rank's `prompts` (indices into
    trajectories()); the collectives listed in the module docstring."""
    from aster.config import load_config
    from aster.metrics import MetricsWriter, read_metrics
    from aster.train.checkpoint import latest_checkpoint, load_checkpoint
    from aster.train.pipeline import make_context, prepare_run_dir
    from aster.train.replay import _token_quantities
    from aster.train.rl import _append_records, learn_from_rollouts, start_rl_stage
    from aster.train.rollout_wait import wait_for_rollouts
    from aster.train.rollouts import trajectory_stats
    from aster.train.sft import encode_dataset, sft_total_steps, start_sft_stage, train_sft
    from aster.train.strategy import full_state_dict

    strategy = "none" if world == 1 else "fsdp2"
    cfg = load_config(None, [*OVERRIDES, f"distributed.strategy={strategy}"])
    run_dir = prepare_run_dir(cfg, None, str(out), False, backend.dist)
    ctx = make_context(cfg, backend, model_dir, run_dir,
                       MetricsWriter(run_dir, is_main=rank == 0, tensorboard=False))
    data, _ = encode_dataset(ctx.tokenizer, conversations(16), 1024)
    sft = start_sft_stage(ctx, sft_total_steps(cfg.sft, len(data)))
    train_sft(sft, data)
    # copies: one process's state dict holds the live parameters, which the RL step moves
    sft_weights = {k: v.clone() for k, v in full_state_dict(sft.policy).items()}
    load_checkpoint(latest_checkpoint(ctx.ckpt_dir("sft")), model=sft.policy,
                    optimizer=sft.optimizer, scheduler=sft.scheduler)
    ctx = start_rl_stage(ctx, "rl", cfg.rl.stage1, 10, warmup_steps=0)  # objective, optimizer
    everything = trajectories(ctx.hf_model.config.vocab_size)
    mine = [everything[GROUP * p + g] for p in prompts for g in range(GROUP)]
    # the wait after rollouts: its own gloo group beside the device-only collective
    waited = wait_for_rollouts(ctx.dist, 0.1 * rank, "rl step 1")
    learned = learn_from_rollouts(ctx, mine, "rl", None)  # the balanced plan's exchange too
    stats = {**learned["metrics"], **trajectory_stats(ctx, mine), **waited}
    quantities = _token_quantities(ctx, mine, learned["adv"].adv, learned["old_lp"])
    records = [{"prompt": p, "epoch": 0, "step": 1} for p in prompts]
    _append_records(ctx, run_dir / "rollouts" / "rl.jsonl", records)
    weights = full_state_dict(ctx.policy)
    if rank == 0:
        sft = [m for m in read_metrics(run_dir) if m["stage"] == "sft"]
        torch.save({"sft": sft_weights, "rl": weights}, out / "weights.pt")
        (out / "result.json").write_text(json.dumps(
            {"sft_loss": [m["loss"] for m in sft], "sft_grad_norm": [m["grad_norm"] for m in sft],
             "rl": stats, "old_logp_sum": quantities["old_logp.sum"],
             "trained_tokens": quantities["input.trained_tokens"],
             "records": sorted(json.loads(line)["prompt"] for line in
                               (run_dir / "rollouts" / "rl.jsonl").read_text().splitlines())}))


def rank_main(rank, world, port, out_dir, model_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = ncclish_backend()
    backend.init_distributed(timeout_s=120)
    from aster.algo import shard_for_rank

    run(backend, rank, world, Path(out_dir) / "ranks", model_dir,
        shard_for_rank(list(range(PROMPTS)), rank, world))
    torch.distributed.destroy_process_group()


def main(port, out_dir, model_dir, world):
    import aster.train.pipeline  # noqa: F401 - the imports the forked ranks inherit
    from aster.backend import select_backend
    from tests.train.ranks import fork_ranks

    t0 = time.perf_counter()
    run(select_backend("cpu", kernel_impl="chunked", engine="hf"), 0, 1,
        Path(out_dir) / "reference", model_dir, reference_order(world))
    print(f"reference: {time.perf_counter() - t0:.1f}s", flush=True)
    register_ncclish()
    code = fork_ranks(rank_main, world, port, out_dir, model_dir)
    print(f"ranks: {time.perf_counter() - t0:.1f}s", flush=True)
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
