"""The engine factory: the rollout engine a backend and a RolloutConfig name (hf, or vLLM in its
continuous, batched or async form). Apart from the Engine interface (engine.py), so that the
interface does not import its implementations."""

from __future__ import annotations

import os

# modules, not classes: an engine class is looked up when it is built (tests swap them)
from aster.rollout import vllm_async, vllm_engine, vllm_stream
from aster.rollout.engine import Engine


def build_engine(backend, model_path: str, rollout_cfg, *, dtype: str = "float32",
                 tokenizer=None, model=None, max_model_len: int | None = None) -> Engine:
    """The rollout engine `backend.engine` names ("hf" or "vllm") for `model_path`.

    `rollout_cfg` is a RolloutConfig; `rollout_cfg.engine` other than "auto" overrides the
    backend's choice, `rollout_cfg.vllm_mode` picks the continuous, batched or async vLLM engine.
    `model` (hf only) shares an already-loaded module instead of loading.
    """
    name = backend.engine if rollout_cfg.engine == "auto" else rollout_cfg.engine
    if name == "vllm":
        backend.require("vllm")
        options, sleep_note = vllm_engine.engine_options(backend, rollout_cfg,
                                                         backend.dist.world_size)
        os.environ.update(backend.engine_env())
        cls = {"continuous": vllm_stream.VLLMStreamEngine,
               "async": vllm_async.VLLMAsyncEngine}.get(rollout_cfg.vllm_mode,
                                                        vllm_engine.VLLMEngine)
        engine = cls(model_path, dtype=dtype, seed=rollout_cfg.seed, max_model_len=max_model_len,
                     **options)
        engine.sleep_note = sleep_note or engine.sleep_note
        return engine
    if name == "hf":
        # lazy: the HF engines subclass transformers' cache classes at import, and transformers
        # costs seconds to import; a vLLM run (or `aster --help`) never needs it
        from aster.rollout import hf_engine, hf_stream  # noqa: PLC0415

        cls = hf_stream.HFStreamEngine if rollout_cfg.hf_mode == "continuous" else hf_engine.HFEngine
        # one decode batch per turn batch: the agent loop sends up to max_concurrency requests
        # (a decode step costs about the same for 64 rows as for 128 on CPU)
        return cls(model if model is not None else model_path, device=backend.device(),
                   dtype=dtype, attn_implementation=backend.attn_implementation(),
                   max_batch_size=rollout_cfg.max_concurrency)
    raise ValueError(f"rollout.engine={name!r} must be one of auto, hf, vllm")
