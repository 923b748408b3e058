"""What rl.max_tokens_per_micro_batch costs on CPU: the tiny default's GRPO learning step
(aster.train.rl.learn_from_rollouts: advantages, plan, old log-probs, 2 updates) on 16 prompts
x 8 trajectories shaped like the tiny task's (a ~450-token prompt, 60-511 response tokens), for
a few budgets, packed, and for padded micro batches of ~16 trajectories (what the tiny config
ran before issue 18: rl.micro_batch_size=16).

    python bench/bench_tiny_rl.py [--budgets 1024,2048,4096] [--threads 1]

Not a throughput.py section: it sizes one config key. Each setting runs twice (a warm-up).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _trajectories(vocab: int) -> list:
    from aster.rollout.agent import Trajectory

    gen = torch.Generator().manual_seed(0)
    out = []
    for p in range(16):
        prompt = torch.randint(3, vocab, (440 + p,), generator=gen).tolist()
        for g in range(8):
            n = int(torch.randint(60, 512, (1,), generator=gen))
            out.append(Trajectory(prompt_ids=prompt, loss_mask=[1] * n, reward=float((p + g) % 3 == 0),
                                  response_ids=torch.randint(3, vocab, (n,), generator=gen).tolist(),
                                  rollout_logprobs=[0.0] * n))
    return out


def measure(model_dir: str, workdir: Path, overrides: list[str]) -> dict:
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.rl import learn_from_rollouts, start_rl_stage

    cfg = load_config("tiny", ["logging.tensorboard=false", *overrides])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    ctx = make_context(cfg, backend, model_dir, workdir, MetricsWriter(workdir, tensorboard=False))
    ctx = start_rl_stage(ctx, "rl", cfg.rl.stage1, 10, weight_decay=0.0, warmup_steps=0)
    trajs = _trajectories(ctx.hf_model.config.vocab_size)
    for _ in range(2):
        t0 = time.perf_counter()
        metrics = learn_from_rollouts(ctx, trajs, "bench", None, keep_old_lp=False)["metrics"]
        seconds = time.perf_counter() - t0
    return {"setting": " ".join(overrides), "seconds": seconds,
            "old_logp_s": metrics["time_old_logp_s"], "update_s": metrics["time_update_s"],
            "micro_batches": metrics["micro_batches"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="1024,2048,4096")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from aster.config import load_config
    from aster.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="aster-bench-tiny-rl-"))
    model_dir = str(build_tiny_model(work / "model", load_config("tiny").model.tiny, seed=0))
    settings = [[f"rl.max_tokens_per_micro_batch={b}"] for b in args.budgets.split(",")]
    settings.append(["rl.max_tokens_per_micro_batch=16000", "rl.packing=false"])
    for i, overrides in enumerate(settings):
        row = measure(model_dir, work / f"run{i}", overrides)
        print(f"{row['setting']:<60} {row['seconds']:6.2f} s (old log-probs "
              f"{row['old_logp_s']:.2f}, updates {row['update_s']:.2f}; "
              f"{row['micro_batches']} micro batches)", flush=True)


if __name__ == "__main__":
    main()
