"""Naive reference kernels: materialise everything, compute in float64. The ground truth that
the chunked and Triton implementations (and the parity goldens) are measured against. Memory
is O(N*V); use it for tests and small shapes only."""

from __future__ import annotations

import torch

from aster.kernels._checks import check_logprobs_args, check_loss_args, token_count


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
    """Token-mean PPO/GRPO clipped loss, written from the formula alone in float64 (autograd
    does the backward; see aster.kernels.clipped_policy_loss for the contract). It shares no
    helper with the chunked / Triton kernels or aster.algo.losses on purpose: it is what they
    are tested against, and tests/algo/test_verl_values.py checks it against verl's values.

        r = exp(clamp(logp - old, -20, 20))
        l = max(-A r, -A clip(r, 1 - low, 1 + high));  where A < 0: min(l, -A c)  (dual clip)
        l *= min(exp(old - rollout), cap)                                       (TIS)
        loss = sum(l over unmasked tokens) / num_tokens
    """
    check_loss_args(logp, old_logp, advantages, mask, num_tokens, clip_low, clip_high, clip_c,
                    rollout_logp, tis_cap)
    out_dtype = _out_dtype(logp)
    old, adv = old_logp.detach().double(), advantages.detach().double()
    valid = mask.bool()
    log_ratio = torch.clamp(logp.double() - old, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    per_token = torch.maximum(-adv * ratio,
                              -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))
    if clip_c is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * clip_c), per_token)
    if tis_cap is not None:
        weight = torch.exp(torch.clamp(old - rollout_logp.detach().double(), -20.0, 20.0))
        per_token = per_token * torch.clamp(weight, max=tis_cap)
    count = token_count(num_tokens, logp.device).double()
    loss = (per_token * valid).sum() / count
    metrics = _loss_metrics(ratio.detach(), log_ratio.detach(), adv, valid, count, clip_low,
                            clip_high, clip_c)
    return loss.to(out_dtype), {k: v.to(out_dtype) for k, v in metrics.items()}


@torch.no_grad()
def _loss_metrics(ratio, log_ratio, adv, valid, count, clip_low, clip_high, clip_c) -> dict:
    """The metrics from their definitions: fractions of the unmasked tokens over `count`
    (upper clip: A > 0 and r > 1 + high; lower: A < 0 and r < 1 - low; dual: A < 0 and r > c),
    approx_kl = mean((r - 1) - log r), ratio mean, and the local maximum ratio."""
    def frac(cond):
        return (valid & cond).double().sum() / count

    dual = (adv < 0) & (ratio > clip_c) if clip_c is not None else torch.zeros_like(valid)
    kept = ratio[valid]
    return {"clip_frac_upper": frac((adv > 0) & (ratio > 1.0 + clip_high)),
            "clip_frac_lower": frac((adv < 0) & (ratio < 1.0 - clip_low)),
            "dual_clip_frac": frac(dual),
            "approx_kl": (((ratio - 1.0) - log_ratio) * valid).sum() / count,
            "ratio_mean": (ratio * valid).sum() / count,
            "ratio_max": kept.max() if kept.numel() else ratio.new_zeros(())}


def fused_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      old_logp: torch.Tensor | None, adv: torch.Tensor, mask: torch.Tensor, *,
                      num_tokens, clip_low: float = 0.2, clip_high: float = 0.28,
                      clip_c: float | None = None, temperature: float = 1.0,
                      rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None,
                      return_logp: bool = False):
    """The definition the fused implementations are tested against: token_logprobs followed by
    clipped_policy_loss, in float64, differentiated by autograd (old_logp None: the current
    log-probs, detached)."""
    logp = token_logprobs(hidden, weight, labels, temperature=temperature)
    old = logp.detach() if old_logp is None else old_logp
    loss, metrics = clipped_policy_loss(logp, old, adv, mask, num_tokens=num_tokens,
                                        clip_low=clip_low, clip_high=clip_high, clip_c=clip_c,
                                        rollout_logp=rollout_logp, tis_cap=tis_cap)
    return (loss, metrics, logp.detach()) if return_logp else (loss, metrics)
