"""aster.kernels: fused token log-probs, the token-mean clipped policy loss, and both fused
into one pass (fused_policy_loss).

Each op has one signature and three implementations: ``reference`` (naive, float64, the ground
truth), ``chunked`` (portable torch, the CPU and NPU default) and ``triton`` (the CUDA default;
also runs under TRITON_INTERPRET=1 on CPU). ``impl="auto"`` asks the current backend.
"""

from __future__ import annotations

import importlib
import logging

import torch

from aster.backend import current_backend

IMPLS = ("reference", "chunked", "triton")
_MODULES = {"reference": "aster.kernels.reference", "chunked": "aster.kernels.chunked",
            "triton": "aster.kernels.triton"}
# fused_policy_loss lives in its own modules (it builds on both ops of an implementation).
_FUSED_MODULES = {"reference": "aster.kernels.reference", "chunked": "aster.kernels.fused",
                  "triton": "aster.kernels.triton.fused_loss"}

__all__ = ["IMPLS", "clipped_policy_loss", "fused_policy_loss", "resolve_impl",
           "token_logprobs"]

log = logging.getLogger("aster")
_ROUTED: set[str] = set()  # reasons already logged (once per process)


def resolve_impl(impl: str = "auto") -> str:
    """The concrete implementation name for `impl` ("auto" asks the current backend)."""
    if impl == "auto":
        impl = current_backend().kernel_impl
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel impl {impl!r}; valid: auto, {', '.join(IMPLS)}")
    return impl


def _module(impl: str, table: dict = _MODULES):
    # Imported lazily so that `import aster.kernels` never imports triton.
    return importlib.import_module(table[resolve_impl(impl)])


def _logprobs_impl(impl: str, dtype: torch.dtype) -> str:
    """The implementation that runs token_logprobs for `dtype`: float64 never goes to Triton
    (its tensor-core dot has no float64 and does not compile on GPUs), it goes to chunked, and
    the reason is logged once."""
    impl = resolve_impl(impl)
    if impl == "triton" and dtype == torch.float64:
        reason = ("token_logprobs: float64 inputs run the chunked kernels, not Triton (Triton's "
                  "tensor-core dot has no float64)")
        if reason not in _ROUTED:
            _ROUTED.add(reason)
            log.info(reason)
        return "chunked"
    return impl


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   temperature: float = 1.0, return_entropy: bool = False, impl: str = "auto"):
    """Per-token log p(label) under softmax(hidden @ weight.T / temperature).

    hidden [N, H] and weight [V, H] (same dtype), labels [N] int in [0, V). Returns fp32
    logp [N], or (logp, entropy) [N] each with ``return_entropy``. The chunked and Triton
    implementations never materialise the [N, V] logits. Differentiable w.r.t. hidden and
    weight for any upstream gradient of logp and entropy; call it under torch.no_grad() for
    old-policy log-probs. float64 inputs never run the Triton kernel (chunked instead).
    """
    return _module(_logprobs_impl(impl, hidden.dtype)).token_logprobs(
        hidden, weight, labels, temperature=temperature, return_entropy=return_entropy)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, num_tokens, clip_low: float = 0.2,
                        clip_high: float = 0.28, clip_c: float | None = None,
                        rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None,
                        impl: str = "auto"):
    """Token-mean PPO/GRPO loss with clip-higher, optional dual clip and truncated IS.

    ratio = exp(clamp(logp - old_logp, -20, 20)); per token
    max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), capped at -A * clip_c for
    A < 0 when ``clip_c`` is set, times the truncated importance weight
    min(exp(old_logp - rollout_logp), tis_cap) when ``tis_cap`` is set (no gradient). The masked
    sum is divided by ``num_tokens``: the unmasked-token count of the *global* mini batch (all
    micro batches, all ranks), so summed micro-batch losses do not depend on the split
    (clamped to >= 1). Returns (loss, metrics) with detached metrics clip_frac_upper,
    clip_frac_lower, dual_clip_frac, approx_kl, ratio_mean (all sums / num_tokens) and
    ratio_max. Only ``logp`` receives a gradient.
    """
    return _module(impl).clipped_policy_loss(
        logp, old_logp, advantages, mask, num_tokens=num_tokens, clip_low=clip_low,
        clip_high=clip_high, clip_c=clip_c, rollout_logp=rollout_logp, tis_cap=tis_cap)


def fused_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      old_logp: torch.Tensor | None, adv: torch.Tensor, mask: torch.Tensor, *,
                      num_tokens, clip_low: float = 0.2, clip_high: float = 0.28,
                      clip_c: float | None = None, temperature: float = 1.0,
                      rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None,
                      return_logp: bool = False, impl: str = "auto"):
    """clipped_policy_loss(token_logprobs(hidden, weight, labels), old_logp, adv, mask, ...)
    in one sweep over the logits, with the gradients w.r.t. hidden and weight made there.

    hidden [N, H], weight [V, H], labels [N]; old_logp, adv, mask (and rollout_logp) [N],
    aligned with the rows of hidden. The contract of both ops holds (temperature, clip-higher,
    dual clip ``clip_c``, truncated IS ``tis_cap``, ``num_tokens`` the global unmasked count).
    ``old_logp=None`` is on-policy: the old log-probs are the sweep's own, detached (the ratio
    is exactly 1, the truncated-IS weight min(pi / pi_rollout, cap)), for a step whose only
    update runs on fresh rollouts. Returns (scalar fp32 loss, metrics) with the metrics
    clipped_policy_loss gives, plus the detached fp32 log-probs [N] with ``return_logp``. The
    loss's gradient depends only on per-token values known in the forward, so the forward
    computes d loss / d hidden and d loss / d weight with three lm_head matmuls (not four) and
    the backward only scales them by the upstream gradient. Nothing [N, V] is materialised.
    Under torch.no_grad() no gradient is made.
    """
    return _module(impl, _FUSED_MODULES).fused_policy_loss(
        hidden, weight, labels, old_logp, adv, mask, num_tokens=num_tokens, clip_low=clip_low,
        clip_high=clip_high, clip_c=clip_c, temperature=temperature, rollout_logp=rollout_logp,
        tis_cap=tis_cap, return_logp=return_logp)
