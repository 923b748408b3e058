"""Colocated vLLM under torchrun: every training rank runs its own in-process vLLM engine
(external_launcher executor) joined to the trainer's gloo process group. Each rank rolls out
its own prompts, takes the same weight update, pushes it through the trainer's path
(aster.train.rollouts.push_weights: in place, no checkpoint), and checks the engine's log-probs
against the new weights; the trainer's group must survive the engine's shutdown. Prints one
JSON line per rank. Usage: torchrun --standalone --nproc_per_node=2
tests/rollout/vllm_colocated_main.py OUT_DIR"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace


def main(out_dir: str) -> dict:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.backend import select_backend
    from aster.config import TinyModelConfig
    from aster.rollout import RolloutConfig, build_engine
    from aster.tiny_model import build_tiny_model
    from aster.train.config import DistributedConfig
    from aster.train.rollouts import push_weights
    from aster.train.strategy import build_strategy
    from tests.rollout.agreement import agreement, perturb, prompts_for

    backend = select_backend("cpu", engine="vllm")
    info = backend.init_distributed(timeout_s=300)  # the trainer's gloo group, from torchrun
    path = str(Path(out_dir) / "tiny")
    if info.rank == 0:
        build_tiny_model(path, TinyModelConfig(), seed=0)
    dist.barrier()
    start = time.perf_counter()
    engine = build_engine(backend, path, RolloutConfig(engine="vllm"), max_model_len=1024)
    result = {"rank": info.rank, "world_size": info.world_size, "executor": engine.executor,
              "startup_s": time.perf_counter() - start}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    prompts = prompts_for(AutoTokenizer.from_pretrained(path))[info.rank:info.rank + 2]
    result["before"] = agreement(engine, model, prompts, seed=info.rank)
    if info.rank == 0:  # ranks need not generate in lockstep
        agreement(engine, model, prompts[:1], seed=5)
    stale = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    perturb(model, seed=11)  # the same update on every rank, as after a data-parallel step
    start = time.perf_counter()
    strategy = build_strategy(DistributedConfig(strategy="none"), backend, torch.float32)
    push_weights(SimpleNamespace(dist=info, hf_model=model, backend=backend,
                                 compute_dtype=torch.float32, strategy=strategy), engine)
    result["push_weights_s"] = time.perf_counter() - start
    result["after"] = agreement(engine, model, prompts, seed=info.rank)
    result["after_vs_old_weights"] = agreement(engine, stale, prompts, seed=info.rank)
    engine.close()
    total = torch.ones(1)
    dist.all_reduce(total)  # the trainer's group outlives the engine
    result["all_reduce_after_close"] = float(total.item())
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    print("COLOCATED " + json.dumps(main(sys.argv[1])), flush=True)
