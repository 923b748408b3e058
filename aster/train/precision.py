"""Mixed precision the way verl, TRL and torchtitan train: fp32 master weights and optimizer
state, `model.dtype` (bf16 by default on accelerators) as the compute dtype, and that dtype for
what leaves the trainer (the rollout engine's weights, the saved Hugging Face model).

Why: bf16 has 8 significant bits, so a bf16 parameter of magnitude ~0.02 rounds away any update
below ~6e-5 (half its spacing there) and a norm gain of 1.0 any below ~4e-3; AdamW's steps at
RL's lr 1e-6 are ~1e-6, so in bf16 parameters nearly all of them vanish.

Per strategy (each a Strategy in aster/train/strategy/, built by build_strategy):
- none / ddp: the fp32 model's forward runs under torch.autocast(compute dtype)
  (aster.algo.PolicyForward); gradients land on the fp32 parameters.
- fsdp2: `fully_shard(mp_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=fp32))`
  over fp32 sharded parameters: the gathered parameters are in the compute dtype, gradients are
  reduce-scattered in fp32 onto the fp32 shards the optimizer steps.
- deepspeed: the engine's bf16 mode (`"bf16": {"enabled": true}`, strategy/deepspeed.py) casts
  the module to bf16 and keeps fp32 master partitions and fp32 optimizer state.

The log-prob kernels (aster.kernels.token_logprobs) get compute-dtype hidden states and lm_head
weights (PolicyForward casts both, so every strategy feeds them the same dtypes) and return
fp32 log-probs; the loss and everything after it are fp32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from aster.errors import AsterUserError

MASTER_DTYPE = torch.float32  # parameters and optimizer state, under every strategy


def compute_dtype(name: str, backend) -> torch.dtype:
    """model.dtype as a torch dtype: `auto` is bf16 where the backend supports it (not on CPU,
    where bf16 matmuls are slow), else fp32."""
    if name == "auto":
        bf16_ok = backend.capabilities.bf16 and backend.device_type != "cpu"
        return torch.bfloat16 if bf16_ok else torch.float32
    dtype = getattr(torch, name)
    if not backend.supports_dtype(dtype):
        raise AsterUserError(f"model.dtype={name} is not supported on --device {backend.name}; "
                             "use model.dtype=float32")
    return dtype


def check_training_dtype(name: str) -> None:
    """One-line error for a compute dtype the trainers cannot train in."""
    if name == "float16":
        raise AsterUserError("model.dtype=float16 cannot train: fp16 gradients need loss "
                             "scaling, which aster does not do; use model.dtype=bfloat16 (or "
                             "float32)")


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16" (engine args, config.json, parity records)."""
    return str(dtype).removeprefix("torch.")


def cast_state(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """`state` with its floating-point tensors in `dtype` (others, and tensors already in it,
    as they are: no copy)."""
    return {name: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
            for name, t in state.items()}
