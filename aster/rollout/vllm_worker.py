"""A vLLM worker extension (engine arg `worker_extension_cls`) for engines whose workers live
in another process (the async engine): new weights arrive as one serialised state dict.

Tensors cannot cross vLLM's engine-core RPC as tensors (its generic decoder returns plain
lists), so the trainer sends `torch.save` bytes and the worker loads them with
``weights_only=True`` and reloads in place, as the in-process engine does.
"""

from __future__ import annotations

import io

import torch


def pack_state_dict(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as bytes for `aster_reload_weights` (tensors moved to host memory)."""
    buffer = io.BytesIO()
    torch.save({name: t.detach().to("cpu").contiguous() for name, t in state.items()}, buffer)
    return buffer.getvalue()


class WeightReloadExtension:
    """Mixed into vLLM's worker class; called as ``collective_rpc("aster_reload_weights")``."""

    def aster_reload_weights(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        self.model_runner.reload_weights(weights_iterator=iter(list(state.items())),
                                         is_checkpoint_format=True)
