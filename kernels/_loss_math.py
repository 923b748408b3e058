"""The clipped policy loss's per-token math and its metrics, written once.

Shared by the reference and chunked kernels (the Triton kernel computes the same terms on
device and names its partial sums with METRIC_NAMES) and by aster.algo.losses, whose plain
torch objectives are built from these pieces. All functions are elementwise over any shape.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| beyond this is clamped: exp(20) ~ 5e8 keeps fp32 finite

# Additive metrics (sums over unmasked tokens / the global count: summing them over micro
# batches and ranks gives the mini batch's value) and the one maximum.
METRIC_NAMES = ("clip_frac_upper", "clip_frac_lower", "dual_clip_frac", "approx_kl",
                "ratio_mean")
MAX_METRIC = "ratio_max"


def ratio_terms(logp: torch.Tensor, old_logp: torch.Tensor):
    """(log-ratio clamped to +-LOG_RATIO_CLAMP, ratio) of pi_theta / pi_old per token."""
    log_ratio = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return log_ratio, torch.exp(log_ratio)


def clipped_token_loss(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float,
                       clip_high: float, clip_c: float | None = None) -> torch.Tensor:
    """PPO's pessimistic surrogate per token, max(-A r, -A clip(r, 1 - low, 1 + high)), with
    the dual clip (Ye et al. 2019) capping it at -A c where A < 0 when `clip_c` is set."""
    per_token = torch.maximum(-adv * ratio,
                              -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))
    if clip_c is not None:
        per_token = torch.where((adv < 0) & (ratio > clip_c), -adv * clip_c, per_token)
    return per_token


def tis_weight(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weight min(pi_old / pi_rollout, cap), no gradient: corrects for
    the rollout engine sampling from slightly different probabilities than the trainer's."""
    log_w = torch.clamp(old_logp.detach() - rollout_logp.detach(), -LOG_RATIO_CLAMP,
                        LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(log_w), max=cap)


@torch.no_grad()
def loss_metrics(ratio, log_ratio, adv, valid, count, clip_low, clip_high, clip_c) -> dict:
    """Detached 0-d metrics in ratio's dtype: METRIC_NAMES (sums over unmasked tokens divided by
    `count`, the global token count) and MAX_METRIC (the local max; reduce with max)."""
    zero = torch.zeros_like(ratio)
    count = torch.as_tensor(count, dtype=ratio.dtype, device=ratio.device)

    def frac(cond):
        return torch.where(valid & cond, 1.0, 0.0).to(ratio.dtype).sum() / count

    dual = (adv < 0) & (ratio > clip_c) if clip_c is not None else torch.zeros_like(valid)
    return {
        "clip_frac_upper": frac((adv > 0) & (ratio > 1.0 + clip_high)),
        "clip_frac_lower": frac((adv < 0) & (ratio < 1.0 - clip_low)),
        "dual_clip_frac": frac(dual),
        "approx_kl": torch.where(valid, (ratio - 1.0) - log_ratio, zero).sum() / count,
        "ratio_mean": torch.where(valid, ratio, zero).sum() / count,
        MAX_METRIC: torch.where(valid, ratio, zero).max() if ratio.numel()
        else torch.zeros((), dtype=ratio.dtype, device=ratio.device),
    }
