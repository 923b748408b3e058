"""The trained weights as a stream of buckets, in the compute dtype, for the rollout engine.

`iter_weight_buckets(model, bucket_bytes, dtype)` walks the model's state dict and yields
lists of (checkpoint name, tensor) whose compute-dtype bytes stay under `bucket_bytes` (a
tensor larger than that goes alone). Each tensor is made full one at a time (an FSDP2 DTensor
through `full_tensor()`, a ZeRO-3 partition inside `GatheredParameters`), cast to the compute
dtype, and its full fp32 form dropped before the next: at no time is there a full fp32 (or
compute-dtype) copy of the model. The extra bytes alive while a consumer handles a bucket are
that bucket, plus, while the next tensor is being made, that tensor in full fp32 and its cast.

The consumer must drop each bucket before asking for the next one (`bucket.clear()`): the
generator rebinds its own reference only when resumed, and a bucket still held by the caller
would double the transient. Collective under FSDP2 and ZeRO-3 (every rank walks the same
tensors in the same order), so every rank must consume the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

_PREFIXES = ("_orig_mod.", "module.", "_fsdp_wrapped_module.")


def _clean(name: str) -> str:
    """The checkpoint name (wrapper prefixes removed, as aster.rollout.engine.state_dict_of)."""
    for prefix in _PREFIXES:
        name = name.replace(prefix, "")
    return name


def _full_in(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` whole and in `dtype` (floating point only), as a tensor of its own."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    full = full.detach()
    if full.is_floating_point() and full.dtype != dtype:
        return full.to(dtype)  # the fp32 `full` (when gathered) dies on return
    return full


def _zero3_full_in(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import deepspeed

    with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
        out = tensor.detach()
        out = out.to(dtype) if out.is_floating_point() and out.dtype != dtype else out.clone()
    return out


def _named_full_tensors(model: nn.Module, dtype: torch.dtype):
    """(name, full tensor in `dtype`) one at a time, under any strategy."""
    from aster.train.ds_engine import is_engine, is_partitioned
    from aster.train.parallel import unwrap

    if is_engine(model):
        model = unwrap(model)
    zero3 = is_partitioned(model)
    for name, tensor in model.state_dict(keep_vars=zero3).items():
        if zero3 and hasattr(tensor, "ds_id"):
            yield _clean(name), _zero3_full_in(tensor, dtype)
        else:
            yield _clean(name), _full_in(tensor, dtype)


def iter_weight_buckets(model: nn.Module, bucket_bytes: int,
                        dtype: torch.dtype) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of (name, full tensor in `dtype`) of at most `bucket_bytes` each (one larger
    tensor alone); collective under sharding strategies."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes={bucket_bytes!r} must be >= 1")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in _named_full_tensors(model, dtype):
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0  # the consumer cleared the list it got
        bucket.append((name, tensor))
        del tensor
        size += nbytes
    if bucket:
        yield bucket
