"""The one place parallelism is applied: none, DDP, torch FSDP2 (`fully_shard`) or DeepSpeed
ZeRO (the engine itself is built with the optimizer: aster.train.ds_engine), all through the
current backend's collective (whatever its `dist_backend` names)."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("aster")


def resolve_strategy(strategy: str, world_size: int) -> str:
    """`auto` is fsdp2 with more than one rank, none otherwise."""
    if strategy == "auto":
        return "fsdp2" if world_size > 1 else "none"
    return strategy


def apply_parallelism(model: nn.Module, backend, dist_cfg,
                      compute_dtype: torch.dtype | None = None) -> tuple[nn.Module, str]:
    """Wrap `model` (a single-device module already on backend.device(), fp32 master
    parameters) for data parallel, computing in `compute_dtype` (None: the parameters' dtype;
    see aster.train.precision for what each strategy does with it).

    Returns (wrapped model, strategy used). Gradients of every strategy are *averaged* over
    ranks; losses normalised by a global token count must be scaled by world_size first.
    """
    world_size = backend.dist.world_size
    strategy = resolve_strategy(dist_cfg.strategy, world_size)
    if strategy == "none" or world_size == 1 and strategy != "deepspeed":
        return model, "none"
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = backend.device()
        ids = None if device.type == "cpu" else [device.index]
        return DistributedDataParallel(model, device_ids=ids), "ddp"
    if strategy == "fsdp2":
        return _fsdp2(model, backend, dist_cfg, compute_dtype), "fsdp2"
    if strategy == "deepspeed":
        return _deepspeed(model, backend, compute_dtype), "deepspeed"
    raise ValueError(f"distributed.strategy={strategy!r} is not known")


def _deepspeed(model: nn.Module, backend, compute_dtype: torch.dtype | None) -> nn.Module:
    """Checks only: the engine needs the optimizer and schedule, so the trainer builds it
    (aster.train.common.build_updater); its bf16 mode casts the module itself."""
    from aster.train.ds_engine import check_dtype, import_deepspeed

    import_deepspeed(backend)
    check_dtype(compute_dtype or next(model.parameters()).dtype)
    return model


def _fsdp2(model: nn.Module, backend, dist_cfg, compute_dtype: torch.dtype | None) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

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


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (each sharded as one unit)."""
    names = set(getattr(_find_pretrained(model), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _find_pretrained(model: nn.Module):
    for m in model.modules():
        if hasattr(m, "_no_split_modules"):
            return m
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The single-device module under a DDP wrapper or DeepSpeed engine (FSDP2 shards in
    place)."""
    return getattr(model, "module", model)


def full_state_dict(model: nn.Module, cpu_offload: bool = True) -> dict:
    """Every weight of `model` in full, under any strategy (FSDP2 shards and ZeRO-3 partitions
    gathered); collective: every rank must call it, rank 0 gets the whole state (with
    cpu_offload, FSDP2 gives the other ranks an empty dict)."""
    from aster.train.ds_engine import gathered_state_dict, is_engine, is_partitioned

    if is_engine(model):
        model = unwrap(model)
    if is_partitioned(model):
        return gathered_state_dict(model, cpu=cpu_offload)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=cpu_offload))
