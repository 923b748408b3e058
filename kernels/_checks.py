"""Argument checks shared by every kernel implementation (cheap: shapes and dtypes only,
never a device sync)."""

from __future__ import annotations

import torch

from aster.kernels._loss_math import LOG_RATIO_CLAMP

__all__ = ["LOG_RATIO_CLAMP", "check_logprobs_args", "check_loss_args", "token_count"]


def check_logprobs_args(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        temperature: float) -> None:
    """Raise ValueError for inputs that token_logprobs cannot take."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got hidden "
                         f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight "
                         f"{tuple(weight.shape)}")
    if labels.shape != (hidden.shape[0],):
        raise ValueError(f"labels must be [N]={hidden.shape[0]}; got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be int64 or int32; got {labels.dtype}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")


def check_loss_args(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, num_tokens, clip_low: float, clip_high: float,
                    clip_c: float | None, rollout_logp: torch.Tensor | None,
                    tis_cap: float | None) -> None:
    """Raise ValueError for inputs that clipped_policy_loss cannot take."""
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask),
                    ("rollout_logp", rollout_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must have logp's shape {tuple(logp.shape)}; got "
                             f"{tuple(t.shape)}")
    if isinstance(num_tokens, torch.Tensor):
        if num_tokens.numel() != 1:
            raise ValueError(f"num_tokens must be a scalar; got shape {tuple(num_tokens.shape)}")
    elif num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0; got {num_tokens}")
    if not (0 <= clip_low < 1) or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0; got clip_low={clip_low}, "
                         f"clip_high={clip_high}")
    if clip_c is not None and clip_c <= 1 + clip_high:
        raise ValueError(f"clip_c (dual clip) must be > 1 + clip_high = {1 + clip_high}; "
                         f"got {clip_c}")
    if (rollout_logp is None) != (tis_cap is None):
        raise ValueError("rollout_logp and tis_cap go together: pass both for truncated "
                         "importance sampling, or neither")
    if tis_cap is not None and tis_cap <= 0:
        raise ValueError(f"tis_cap must be > 0; got {tis_cap}")


def token_count(num_tokens, device) -> torch.Tensor:
    """num_tokens as an fp32 tensor, at least 1 so an all-masked batch gives 0, not nan."""
    n = torch.as_tensor(num_tokens, dtype=torch.float32, device=device).reshape(())
    return n.clamp(min=1.0)
