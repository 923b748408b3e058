"""Triton token-mean clipped policy loss: a forward kernel that writes per-block partial sums
(loss and metrics; reduced in torch, so the result is deterministic, no atomics) and a
backward kernel that recomputes d(loss)/d(logp) from the inputs (nothing [tokens] is saved
besides the inputs)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aster.kernels._checks import check_loss_args, token_count
from aster.kernels._loss_math import LOG_RATIO_CLAMP, MAX_METRIC, METRIC_NAMES, tis_weight
from aster.kernels.triton.logprobs import _check_device, interpreting

_N_PARTS = 2 + len(METRIC_NAMES)  # the loss, METRIC_NAMES in order, MAX_METRIC


@triton.jit
def token_loss_terms(lp, old, adv, valid, tis_w, clip_low, clip_high, clip_c,
                     HAS_DUAL: tl.constexpr, HAS_TIS: tl.constexpr, CLAMP: tl.constexpr):
    """Per-token loss, d loss / d logp (both 0 where not valid), ratio and log-ratio from fp32
    values: shared by the loss kernels and the fused log-prob + loss kernel."""
    log_ratio = tl.minimum(tl.maximum(lp - old, -CLAMP), CLAMP)
    ratio = tl.exp(log_ratio)
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    loss = tl.maximum(-adv * ratio, -adv * clipped)
    live = ~(((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low)))
    live = live & (tl.abs(log_ratio) < CLAMP)
    if HAS_DUAL:
        dual = (adv < 0) & (ratio > clip_c)
        loss = tl.where(dual, -adv * clip_c, loss)
        live = live & ~dual
    dloss = tl.where(live, -adv * ratio, 0.0)
    if HAS_TIS:
        loss = loss * tis_w
        dloss = dloss * tis_w
    loss = tl.where(valid, loss, 0.0)
    dloss = tl.where(valid, dloss, 0.0)
    return loss, dloss, ratio, log_ratio


@triton.jit
def _token_terms(lp_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr, offs, n, clip_low, clip_high,
                 clip_c, HAS_DUAL: tl.constexpr, HAS_TIS: tl.constexpr, CLAMP: tl.constexpr):
    """Per token: loss, d loss / d logp, ratio, log-ratio, advantage and validity (fp32)."""
    in_range = offs < n
    valid = (tl.load(mask_ptr + offs, mask=in_range, other=0) != 0) & in_range
    lp = tl.load(lp_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    tis_w = 1.0
    if HAS_TIS:
        tis_w = tl.load(tis_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    loss, dloss, ratio, log_ratio = token_loss_terms(lp, old, adv, valid, tis_w, clip_low,
                                                     clip_high, clip_c, HAS_DUAL, HAS_TIS, CLAMP)
    return loss, dloss, ratio, log_ratio, adv, valid


@triton.jit
def _loss_fwd_kernel(lp_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr, parts_ptr, n, clip_low,
                     clip_high, clip_c, HAS_DUAL: tl.constexpr, HAS_TIS: tl.constexpr,
                     CLAMP: tl.constexpr, N_PARTS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    loss, dloss, ratio, log_ratio, adv, valid = _token_terms(
        lp_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr, offs, n, clip_low, clip_high, clip_c,
        HAS_DUAL, HAS_TIS, CLAMP)
    one = tl.where(valid, 1.0, 0.0)
    upper = tl.where((adv > 0) & (ratio > 1.0 + clip_high), one, 0.0)
    lower = tl.where((adv < 0) & (ratio < 1.0 - clip_low), one, 0.0)
    dual = tl.where((adv < 0) & (ratio > clip_c), one, 0.0) if HAS_DUAL else one * 0.0
    kl = tl.where(valid, (ratio - 1.0) - log_ratio, 0.0)
    ratio_v = tl.where(valid, ratio, 0.0)
    base = parts_ptr + pid.to(tl.int64) * N_PARTS
    tl.store(base + 0, tl.sum(loss, axis=0))
    tl.store(base + 1, tl.sum(upper, axis=0))
    tl.store(base + 2, tl.sum(lower, axis=0))
    tl.store(base + 3, tl.sum(dual, axis=0))
    tl.store(base + 4, tl.sum(kl, axis=0))
    tl.store(base + 5, tl.sum(ratio_v, axis=0))
    tl.store(base + 6, tl.max(ratio_v, axis=0))


@triton.jit
def _loss_bwd_kernel(lp_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr, scale_ptr, grad_ptr, n,
                     clip_low, clip_high, clip_c, HAS_DUAL: tl.constexpr, HAS_TIS: tl.constexpr,
                     CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    _, dloss, _, _, _, _ = _token_terms(lp_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr, offs, n,
                                        clip_low, clip_high, clip_c, HAS_DUAL, HAS_TIS, CLAMP)
    scale = tl.load(scale_ptr)  # upstream grad / num_tokens, read on device (no host sync)
    tl.store(grad_ptr + offs, (dloss * scale).to(grad_ptr.dtype.element_ty), mask=offs < n)


def _block(n: int) -> int:
    return 256 if interpreting() else 1024


class _TritonClippedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, old, adv, valid, tis_w, count, clip_low, clip_high, clip_c):
        n = logp.numel()
        block = _block(n)
        n_blocks = max(1, triton.cdiv(n, block))
        parts = torch.zeros((n_blocks, _N_PARTS), dtype=torch.float32, device=logp.device)
        args = (clip_low, clip_high, 0.0 if clip_c is None else clip_c)
        flags = dict(HAS_DUAL=clip_c is not None, HAS_TIS=tis_w is not None,
                     CLAMP=LOG_RATIO_CLAMP, BLOCK=block)
        tis_arg = tis_w if tis_w is not None else old
        if n:
            _loss_fwd_kernel[(n_blocks,)](logp, old, adv, valid, tis_arg, parts, n, *args,
                                          N_PARTS=_N_PARTS, **flags)
        ctx.save_for_backward(logp, old, adv, valid, tis_arg, count)
        ctx.args, ctx.flags, ctx.n_blocks = args, flags, n_blocks
        sums = parts.sum(0)
        ratio_max = parts[:, 6].max()
        return sums[0] / count, sums[1:6] / count, ratio_max

    @staticmethod
    def backward(ctx, grad_loss, _g_sums, _g_max):
        logp, old, adv, valid, tis_arg, count = ctx.saved_tensors
        grad = torch.empty_like(logp)
        scale = (grad_loss.float() / count).reshape(1).contiguous()
        if logp.numel():
            _loss_bwd_kernel[(ctx.n_blocks,)](logp, old, adv, valid, tis_arg, scale, grad,
                                              logp.numel(), *ctx.args, **ctx.flags)
        return grad, None, None, None, None, None, None, None, None


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, num_tokens, clip_low: float = 0.2,
                        clip_high: float = 0.28, clip_c: float | None = None,
                        rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None):
    """Triton token-mean clipped loss; see aster.kernels.clipped_policy_loss."""
    check_loss_args(logp, old_logp, advantages, mask, num_tokens, clip_low, clip_high, clip_c,
                    rollout_logp, tis_cap)
    _check_device(logp)
    flat = logp.reshape(-1).contiguous()
    old = old_logp.detach().reshape(-1).float().contiguous()
    adv = advantages.detach().reshape(-1).float().contiguous()
    valid = mask.detach().reshape(-1).to(torch.int8).contiguous()
    tis_w = None
    if tis_cap is not None:
        tis_w = tis_weight(old, rollout_logp.reshape(-1).float(), tis_cap).contiguous()
    count = token_count(num_tokens, logp.device)
    loss, sums, ratio_max = _TritonClippedLoss.apply(flat, old, adv, valid, tis_w, count,
                                                     float(clip_low), float(clip_high), clip_c)
    # the kernel's partial sums 1..5 are METRIC_NAMES in order (see _loss_fwd_kernel)
    metrics = {name: sums[i].detach() for i, name in enumerate(METRIC_NAMES)}
    metrics[MAX_METRIC] = ratio_max.detach()
    return loss, metrics
