"""A continuous-batching vLLM engine (rollout.vllm_mode=continuous: the in-process engine
stepped by its own thread; async: AsyncLLM) through the real agent loop and sandbox, in its own
process: multi-turn tool trajectories with their masks and sampled-token log-probs vs the
trainer's recompute, before and after an in-place weight update. Prints one JSON line.
Usage: python -m tests.rollout.vllm_async_main OUT_DIR [MODE]  (MODE: async, continuous)"""

from __future__ import annotations

import json
import sys
import time


def _rollouts(engine, tokenizer, pool, seed: int):
    from aster.rollout import RolloutConfig, run_rollouts
    from tests.rollout.agreement import ToolInjectingEngine

    tools = ToolInjectingEngine(engine, tokenizer, think=12, calls=2)
    prompts = [{"prompt": f"What is {i} * 3 + 1?", "answer": "7"} for i in range(6)]
    cfg = RolloutConfig(max_response_tokens=1024, max_tool_calls=4, max_concurrency=12)
    stats: dict = {}
    trajs = run_rollouts(tools, pool, prompts, cfg, tokenizer=tokenizer, samples_per_prompt=2,
                         seed=seed, stats=stats)
    return trajs, stats


def main(out_dir: str, mode: str = "async") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.backend import select_backend
    from aster.rollout import RolloutConfig, SamplingParams
    from aster.rollout.factory import build_engine
    from aster.sandbox import SandboxConfig, SandboxPool
    from aster.tiny_model import TinyModelConfig, build_tiny_model
    from tests.rollout.agreement import agreement, check_trajectories, perturb, prompts_for

    torch.set_num_threads(1)
    path = build_tiny_model(out_dir, TinyModelConfig(), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = time.perf_counter()
    engine = build_engine(select_backend("cpu"), path,
                          RolloutConfig(engine="vllm", vllm_mode=mode), max_model_len=1024)
    result = {"engine": type(engine).__name__, "startup_s": time.perf_counter() - start,
              "capacity": engine.capacity}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    try:
        with SandboxPool(SandboxConfig(max_sessions=12, preload=["math"])) as pool:
            trajs, stats = _rollouts(engine, tokenizer, pool, seed=0)
            result["rollouts"] = check_trajectories(trajs, model, tokenizer)
            result["mean_in_flight"] = stats["mean_batch"]
            result["single_turn"] = agreement(engine, model, prompts_for(tokenizer))
            if mode == "continuous":  # a full context ends its trajectory, not the rollout
                (full,) = engine.generate([[5] * 1024], SamplingParams(max_new_tokens=8))
                result["full_context"] = [len(full.token_ids), full.finish_reason]
            stale = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
            perturb(model)
            start = time.perf_counter()
            engine.load_weights(model)
            result["load_weights_s"] = time.perf_counter() - start
            trajs, _ = _rollouts(engine, tokenizer, pool, seed=1)
            result["rollouts_after"] = check_trajectories(trajs, model, tokenizer)
            result["after_vs_old_weights"] = check_trajectories(trajs, stale, tokenizer)
    finally:
        engine.close()
    return result


if __name__ == "__main__":
    print("ASYNC " + json.dumps(main(*sys.argv[1:3])), flush=True)
