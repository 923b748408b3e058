"""Triton implementations of the aster.kernels ops (CUDA default; TRITON_INTERPRET=1 on CPU;
written with tunable tiles for triton-ascend)."""

from aster.kernels.triton.fused_loss import fused_policy_loss
from aster.kernels.triton.logprobs import token_logprobs
from aster.kernels.triton.policy_loss import clipped_policy_loss

__all__ = ["clipped_policy_loss", "fused_policy_loss", "token_logprobs"]
