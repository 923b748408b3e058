"""The 3-process gloo runner of tests/train/test_balance_ranks.py.

    python _balance_worker.py PORT OUT_DIR MODEL_DIR

One GRPO step (learn_from_rollouts: advantages, the balanced plan and its trajectory exchange,
old log-probs, 2 PPO epochs) on 6 prompts x 2 samples whose lengths are very uneven by the rank
that generated them: rank 0's include one 300-token trajectory, rank 2's are all ~10 tokens.
First in one process (strategy none, OUT_DIR/reference), then on 3 forked ranks under FSDP2
(OUT_DIR/ranks). Rank 0 writes result.json (the step's metrics) and weights.pt; every rank
writes rank<R>.json: the tokens and trajectories its forwards processed, how many forwards ran
and how many of its micro batches were empty.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))

PROMPTS, GROUP = 6, 2
# response lengths per prompt's two samples; prompts are 6 tokens. Rank r generates prompts
# 2r and 2r+1: rank 0 holds 300 + 3 x ~40 tokens, rank 1 ~4 x 100, rank 2 4 x ~10.
RESPONSES = [(294, 34), (36, 38), (114, 104), (96, 86), (4, 5), (6, 7)]
OVERRIDES = ["rl.prompts_per_step=6", "rl.mini_batch_prompts=6", f"rl.group_size={GROUP}",
             "rl.ppo_epochs=2", "rl.max_tokens_per_micro_batch=128", "rl.lr=20",
             "rl.max_grad_norm=100",
             "rl.adv_std=population", "rl.old_logp=recompute", "logging.tensorboard=false"]


def trajectories(vocab: int) -> list:
    from aster.rollout.agent import Trajectory

    gen = torch.Generator().manual_seed(0)
    out = []
    for p, lengths in enumerate(RESPONSES):
        prompt = torch.randint(3, vocab, (6,), generator=gen).tolist()
        for g, n in enumerate(lengths):
            out.append(Trajectory(
                prompt_ids=prompt, reward=float((p + g) % 2), loss_mask=[1] * n,
                response_ids=torch.randint(3, vocab, (n,), generator=gen).tolist(),
                rollout_logprobs=[0.0] * n))
    return out


def run(backend, rank: int, world: int, out: Path, model_dir: str) -> None:
    from aster.algo import shard_for_rank
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.rl import learn_from_rollouts, start_rl_stage
    from aster.train.strategy import full_state_dict

    out.mkdir(parents=True, exist_ok=True)
    strategy = "none" if world == 1 else "fsdp2"
    cfg = load_config(None, [*OVERRIDES, f"distributed.strategy={strategy}"])
    ctx = make_context(cfg, backend, model_dir, out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    # plain SGD (lr 20: the 2nd epoch clips): weights linear in the gradient, where AdamW's
    # near-sign first step turns reduction-order noise in near-zero elements into lr-sized moves
    optimizer = torch.optim.SGD(ctx.policy.parameters(), lr=cfg.rl.lr)
    ctx = start_rl_stage(ctx, "rl", cfg.rl.stage1, 10, optimizer=optimizer, warmup_steps=0)
    everything = trajectories(ctx.hf_model.config.vocab_size)
    mine = [everything[GROUP * p + g] for p in shard_for_rank(list(range(PROMPTS)), rank, world)
            for g in range(GROUP)]
    seen = {"tokens": 0, "trajectories": 0, "forwards": 0, "empty": 0}

    def count(_module, args, kwargs, _output):
        ids = kwargs["input_ids"]
        pos = kwargs.get("position_ids")
        seen["forwards"] += 1
        if pos is None:  # padded rows are not used here; counted as rows
            seen["trajectories"] += ids.shape[0]
        elif ids.numel() == 1:  # the one pad token of an empty micro batch
            seen["empty"] += 1
        else:
            seen["trajectories"] += int((pos == 0).sum())
            seen["tokens"] += ids.numel()

    hook = ctx.hf_model.base_model.register_forward_hook(count, with_kwargs=True)
    learned = learn_from_rollouts(ctx, mine, "rl", None)
    hook.remove()
    weights = full_state_dict(ctx.policy)
    generated = sum(len(t.prompt_ids) + len(t.response_ids) for t in mine)
    (out / f"rank{rank}.json").write_text(json.dumps({**seen, "generated_tokens": generated}))
    if rank == 0:
        torch.save(weights, out / "weights.pt")
        (out / "result.json").write_text(json.dumps(learned["metrics"]))


def rank_main(rank, world, port, out_dir, model_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from aster.backend import select_backend

    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    backend.init_distributed(timeout_s=120)  # a mismatched collective fails, never hangs
    run(backend, rank, world, Path(out_dir) / "ranks", model_dir)
    torch.distributed.destroy_process_group()


def main(port, out_dir, model_dir, world=3):
    import aster.train.pipeline  # noqa: F401 - the imports the forked ranks inherit
    from aster.backend import select_backend
    from tests.train.ranks import fork_ranks

    t0 = time.perf_counter()
    run(select_backend("cpu", kernel_impl="chunked", engine="hf"), 0, 1,
        Path(out_dir) / "reference", model_dir)
    print(f"reference: {time.perf_counter() - t0:.1f}s", flush=True)
    code = fork_ranks(rank_main, world, port, out_dir, model_dir)
    print(f"ranks: {time.perf_counter() - t0:.1f}s", flush=True)
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
