"""Naive reference kernels: materialise everything, compute in float64. The ground truth that
the chunked and Triton implementations (and the parity goldens) are measured against. Memory
is O(N*V); use it for tests and small shapes only."""

from __future__ import annotations

import torch

from aster.kernels._checks import (
    LOG_RATIO_CLAMP,
    check_logprobs_args,
    check_loss_args,
    token_count,
)


def _out_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   temperature: float = 1.0, return_entropy: bool = False):
    """log p(label) [N] (and entropy [N]) from the full [N, V] float64 logits.

    Outputs are float64 for float64 inputs and float32 otherwise; differentiable by autograd.
    """
    check_logprobs_args(hidden, weight, labels, temperature)
    vocab = weight.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(f"labels must lie in [0, {vocab}); got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    logits = (hidden.double() @ weight.double().t()) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, labels.long().unsqueeze(1)).squeeze(1).to(_out_dtype(hidden))
    if not return_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy.to(_out_dtype(hidden))


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, num_tokens, clip_low: float = 0.2,
                        clip_high: float = 0.28, clip_c: float | None = None,
                        rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None):
    """Token-mean PPO/GRPO clipped loss, written the obvious way in float64.

    See aster.kernels.clipped_policy_loss for the contract.
    """
    check_loss_args(logp, old_logp, advantages, mask, num_tokens, clip_low, clip_high, clip_c,
                    rollout_logp, tis_cap)
    out_dtype = _out_dtype(logp)
    lp, old, adv = logp.double(), old_logp.double(), advantages.double()
    valid = mask.bool()
    log_ratio = torch.clamp(lp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    if clip_c is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * clip_c), per_token)
    if tis_cap is not None:
        tis_log = torch.clamp(old - rollout_logp.double(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        per_token = per_token * torch.clamp(torch.exp(tis_log), max=tis_cap)
    count = token_count(num_tokens, logp.device).double()
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    loss = (per_token.sum() / count).to(out_dtype)

    with torch.no_grad():
        r = ratio.detach()
        zero = torch.zeros_like(r)

        def frac(cond):
            return (torch.where(valid & cond, 1.0, 0.0).sum() / count).to(out_dtype)

        metrics = {
            "clip_frac_upper": frac((adv > 0) & (r > 1.0 + clip_high)),
            "clip_frac_lower": frac((adv < 0) & (r < 1.0 - clip_low)),
            "dual_clip_frac": frac((adv < 0) & (r > clip_c)) if clip_c is not None
            else frac(torch.zeros_like(valid)),
            "approx_kl": (torch.where(valid, (r - 1.0) - log_ratio, zero).sum() / count
                          ).to(out_dtype),
            "ratio_mean": (torch.where(valid, r, zero).sum() / count).to(out_dtype),
            "ratio_max": torch.where(valid, r, zero).max().to(out_dtype) if r.numel()
            else torch.zeros((), dtype=out_dtype),
        }
    return loss, metrics


def fused_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                      num_tokens, clip_low: float = 0.2, clip_high: float = 0.28,
                      clip_c: float | None = None, temperature: float = 1.0,
                      rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None):
    """The definition the fused implementations are tested against: token_logprobs followed by
    clipped_policy_loss, in float64, differentiated by autograd."""
    logp = token_logprobs(hidden, weight, labels, temperature=temperature)
    return clipped_policy_loss(logp, old_logp, adv, mask, num_tokens=num_tokens,
                               clip_low=clip_low, clip_high=clip_high, clip_c=clip_c,
                               rollout_logp=rollout_logp, tis_cap=tis_cap)
