"""Colocated vLLM under torchrun: every training rank runs its own in-process vLLM engine
(external_launcher executor) joined to the trainer's gloo process group. Each rank rolls out
its own prompts, takes the same weight update, pushes it through the trainer's path
(aster.train.rollouts.push_weights: in place, no checkpoint), and checks the engine's log-probs
against the new weights; then one real GRPO step of the trainer (aster.train.pipeline, stage
rl_stage1) on the same engine, in the continuous mode, the engine sized from the run's
budgets; the trainer's group must survive the engine's shutdown. Prints one JSON line per rank. Usage: torchrun --standalone --nproc_per_node=2
tests/rollout/vllm_colocated_main.py OUT_DIR"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def grpo_config(model_path: str):
    from aster.config import load_config
    from tests.train.small import SMALL

    return load_config(None, [*SMALL, "run.stages=[rl_stage1]", "rl.stage1.max_steps=1",
                              "rl.prompts_per_step=2", "rl.mini_batch_prompts=2",
                              f"model.path={model_path}", "rollout.engine=vllm",
                              "rollout.vllm_mode=continuous"])


def grpo_step(cfg, backend, engine, run_dir: Path) -> dict:
    """One GRPO step of the real pipeline with `engine` as the run's engine: its rollouts go
    through the agent loop's per-turn requests (counted here), the update through DDP on the
    trainer's gloo group, and the new weights into the engine."""
    from aster.train import pipeline, rollouts

    calls = {"agenerate": 0}
    inner = engine.agenerate

    async def counted(prompt, params):
        calls["agenerate"] += 1
        return await inner(prompt, params)

    engine.agenerate = counted
    made = []
    real_make = rollouts.make_engine
    rollouts.make_engine = lambda ctx, model_dir, max_model_len=None: made.append(1) or engine
    try:
        pipeline.run_pipeline(cfg, backend, output_dir=str(run_dir))
    finally:
        rollouts.make_engine = real_make
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"rl_stage1"' in line] if (run_dir / "metrics.jsonl").exists() else []
    return {"engines_made": len(made), "agenerate_calls": calls["agenerate"],
            "closed": engine.llm is None, "rl_steps": len(steps),
            "trajectories": steps[-1].get("trajectories") if steps else None}


def main(out_dir: str) -> dict:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.backend import select_backend
    from aster.rollout.factory import build_engine
    from aster.tiny_model import TinyModelConfig, build_tiny_model
    from aster.train.rollouts import push_weights, run_max_model_len
    from aster.train.strategy import build_strategy
    from tests.rollout.agreement import agreement, perturb, prompts_for

    backend = select_backend("cpu", engine="vllm")
    info = backend.init_distributed(timeout_s=300)  # the trainer's gloo group, from torchrun
    path = str(Path(out_dir) / "tiny")
    if info.rank == 0:
        build_tiny_model(path, TinyModelConfig(), seed=0)
    dist.barrier()
    start = time.perf_counter()
    cfg = grpo_config(path)
    engine = build_engine(backend, path, cfg.rollout, max_model_len=run_max_model_len(cfg, path))
    result = {"rank": info.rank, "world_size": info.world_size, "executor": engine.executor,
              "mode": engine.mode, "capacity": engine.capacity,
              "startup_s": time.perf_counter() - start}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    prompts = prompts_for(AutoTokenizer.from_pretrained(path))[info.rank:info.rank + 2]
    result["before"] = agreement(engine, model, prompts, seed=info.rank)
    if info.rank == 0:  # ranks need not generate in lockstep
        agreement(engine, model, prompts[:1], seed=5)
    stale = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    perturb(model, seed=11)  # the same update on every rank, as after a data-parallel step
    start = time.perf_counter()
    cfg.rollout.weight_bucket_mb = 1  # several buckets
    strategy = build_strategy(cfg.distributed, backend, torch.float32)
    push_weights(SimpleNamespace(dist=info, hf_model=model, backend=backend, cfg=cfg,
                                 compute_dtype=torch.float32, strategy=strategy), engine)
    result["push_weights_s"] = time.perf_counter() - start
    result["after"] = agreement(engine, model, prompts, seed=info.rank)
    result["after_vs_old_weights"] = agreement(engine, stale, prompts, seed=info.rank)
    result["grpo"] = grpo_step(cfg, backend, engine, Path(out_dir) / "run")  # closes the engine
    total = torch.ones(1)
    dist.all_reduce(total)  # the trainer's group outlives the engine
    result["all_reduce_after_close"] = float(total.item())
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    print("COLOCATED " + json.dumps(main(sys.argv[1])), flush=True)
