"""distributed.strategy=fsdp2: torch's `fully_shard` per decoder layer and over the whole
policy. Parameters are fp32 shards; MixedPrecisionPolicy gathers them in the compute dtype and
reduce-scatters gradients in fp32. The frozen reference policy is sharded the same way."""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from aster.rollout.engine import state_dict_of
from aster.train.strategy import Strategy


class FSDP2Strategy(Strategy):
    name = "fsdp2"

    @staticmethod
    def memory_shards(zero_stage: int, devices: int) -> tuple[int, int, int]:
        return devices, devices, devices  # fully sharded: parameters, gradients, AdamW state

    def _wrap(self, policy):
        return shard(policy, self.backend, self.dist_cfg, self.compute_dtype)

    def wrap_reference(self, policy):
        return shard(policy, self.backend, self.dist_cfg, self.compute_dtype)

    def full_tensors(self, model):
        """One parameter's full tensor at a time (an all-gather per DTensor: every rank
        iterates the same names and gets the whole tensor)."""
        for name, tensor in state_dict_of(model).items():
            yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def shard(model, backend, dist_cfg, compute_dtype: torch.dtype | None):
    mesh = init_device_mesh(backend.device_type, (backend.dist.world_size,))
    kwargs = {"mesh": mesh, "reshard_after_forward": dist_cfg.reshard_after_forward}
    if compute_dtype is not None and compute_dtype != next(model.parameters()).dtype:
        # gathered parameters in the compute dtype over fp32 shards; gradients reduced in fp32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype,
                                                   reduce_dtype=torch.float32)
    if dist_cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _decoder_layers(model) -> list:
    """The repeated transformer blocks (each sharded as one unit)."""
    names = set(getattr(_find_pretrained(model), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _find_pretrained(model):
    for m in model.modules():
        if hasattr(m, "_no_split_modules"):
            return m
    return model
