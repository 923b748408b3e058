"""fused_policy_loss: the GRPO clipped loss and its gradients w.r.t. hidden and W in one sweep
over the logits (the chunked implementation, plus the plumbing the Triton one shares).

token_logprobs followed by clipped_policy_loss costs four lm_head matmuls: the forward's logits,
and in the backward the logits again (the upstream gradient of logp is unknown at forward
time) plus the two gradient GEMMs. For a token-local loss the upstream gradient is known in
closed form: d loss / d logp_i depends only on logp_i, old_logp_i, adv_i, mask_i (and the
truncated-IS weight) and the global token count. So one sweep does it all, per chunk of rows
over the full vocabulary (Liger-Kernel's fused linear cross-entropy does the same for CE):

    logits [n, V] -> lse, logp -> g = d loss / d logp -> dlogits = g * (onehot - p) / T
    (in place) -> grad_hidden[chunk] = dlogits @ W,  grad_W += dlogits^T @ hidden[chunk]

three matmuls instead of four, and the backward only scales the stored gradients by the
upstream scalar. The price: grad_W accumulates across row chunks (fp32, [V, H]) instead of
being written once per vocab slice, so the chunk is larger than token_logprobs' (the
accumulate reads and writes grad_W once per chunk: FUSED_CHUNK_ELEMENTS = 2**26 gives 441 rows
at V=151936, ~110 flop per byte of that traffic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from aster.kernels._checks import (
    LOG_RATIO_CLAMP,
    check_logprobs_args,
    check_loss_args,
    token_count,
)
from aster.kernels.chunked import _chunk_logits, _loss_terms, add_onehot_, loss_metrics

# Elements of one chunk's [n, V] fp32 logits (256 MiB); see the module docstring.
FUSED_CHUNK_ELEMENTS = 1 << 26
METRIC_NAMES = ("clip_frac_upper", "clip_frac_lower", "dual_clip_frac", "approx_kl",
                "ratio_mean", "ratio_max")


def check_fused_args(hidden, weight, labels, old_logp, adv, mask, num_tokens, clip_low,
                     clip_high, clip_c, rollout_logp, tis_cap, temperature) -> None:
    """Raise ValueError for inputs that fused_policy_loss cannot take (shapes only)."""
    check_logprobs_args(hidden, weight, labels, temperature)
    # labels stands in for the [N] logp the loss checks compare every per-token input with.
    check_loss_args(labels, old_logp, adv, mask, num_tokens, clip_low, clip_high, clip_c,
                    rollout_logp, tis_cap)


def loss_inputs(old_logp, adv, mask, rollout_logp, tis_cap, device):
    """fp32 old log-probs, advantages, validity and the truncated-IS weight (None when off).
    On-policy (old_logp None) both old and the weight are None: they come from the sweep's
    own log-probs (`on_policy_terms`)."""
    adv = adv.detach().float()
    if old_logp is None:
        return None, adv, mask.detach().bool(), None
    old = old_logp.detach().float()
    tis_w = None
    if tis_cap is not None:
        tis_log = torch.clamp(old - rollout_logp.detach().float(), -LOG_RATIO_CLAMP,
                              LOG_RATIO_CLAMP)
        tis_w = torch.clamp(torch.exp(tis_log), max=tis_cap)
    return old, adv, mask.detach().bool(), tis_w


def on_policy_terms(logp, rollout_logp, tis_cap):
    """(old, truncated-IS weight or None) when the old policy is the current one: old is logp
    itself (so the ratio is exactly 1 and its gradient d ratio / d logp is 1) and the weight
    min(pi / pi_rollout, cap) uses it."""
    old = logp.detach().float()
    if tis_cap is None:
        return old, None
    return old, torch.clamp(torch.exp(torch.clamp(old - rollout_logp.detach().float(),
                                                  -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)),
                            max=tis_cap)


def chunk_rows(num_tokens: int, vocab: int, chunk_tokens: int | None) -> int:
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1; got {chunk_tokens}")
        return chunk_tokens
    return max(1, min(num_tokens, FUSED_CHUNK_ELEMENTS // max(vocab, 1)))


def sweep(hidden, weight, chunk: int, rows_fn: Callable, *, need_h: bool, need_w: bool,
          accumulate_w: Callable | None = None):
    """The one pass over row chunks. rows_fn(s, e, want_grad) -> (logp [e-s] fp32, dlogits
    [e-s, V] w.r.t. the raw logits in hidden's dtype, or None). Returns (logp, grad_hidden,
    grad_W) with the gradients for an upstream gradient of 1 (None where not needed)."""
    n_tok = hidden.shape[0]
    logp = torch.empty(n_tok, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_h else None
    acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    grad_w = None
    if need_w:  # one chunk writes grad_W directly in weight's dtype; more accumulate in fp32
        grad_w = torch.empty(weight.shape, dtype=weight.dtype if n_tok <= chunk else acc_dtype,
                             device=weight.device)
        if n_tok == 0:
            grad_w.zero_()
    for s in range(0, n_tok, chunk):
        e = min(s + chunk, n_tok)
        logp[s:e], dlogits = rows_fn(s, e, need_h or need_w)
        if need_h:  # each row chunk's grad_hidden is written exactly once
            torch.mm(dlogits, weight, out=grad_h[s:e])
        if need_w:
            (accumulate_w or accumulate_grad_w)(grad_w, dlogits, hidden[s:e], first=s == 0)
        del dlogits
    if grad_w is not None and grad_w.dtype != weight.dtype:
        grad_w = grad_w.to(weight.dtype)
    return logp, grad_h, grad_w


def accumulate_grad_w(grad_w: torch.Tensor, dlogits: torch.Tensor, hidden_chunk: torch.Tensor,
                      *, first: bool) -> None:
    """grad_w = (or +=, after the first chunk) dlogits^T @ hidden_chunk, the matmul in the
    inputs' dtype (BLAS accumulates bf16 products in fp32; each chunk's product is rounded
    once before it joins an fp32 grad_w)."""
    if grad_w.dtype == dlogits.dtype:
        if first:
            torch.mm(dlogits.t(), hidden_chunk, out=grad_w)
        else:
            grad_w.addmm_(dlogits.t(), hidden_chunk)
    elif first:
        grad_w.copy_(dlogits.t() @ hidden_chunk)
    else:
        grad_w.add_(dlogits.t() @ hidden_chunk)


class FusedLoss(torch.autograd.Function):
    """loss (and detached metrics and log-probs) from a sweep that already computed the
    gradients: the backward only scales them by the upstream gradient of the loss."""

    @staticmethod
    def forward(ctx, hidden, weight, run):
        loss, metrics, grad_h, grad_w, logp = run(ctx.needs_input_grad[0],
                                                  ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(metrics, logp)
        return loss, metrics, logp

    @staticmethod
    def backward(ctx, grad_loss, _grad_metrics, _grad_logp):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype), None)


def apply(hidden, weight, run, return_logp: bool = False):
    """Run `run(need_h, need_w) -> (loss, metric vector, grad_h, grad_w, logp)` as a
    differentiable loss of (hidden, weight); under torch.no_grad (or frozen inputs) no gradient
    is made. Returns (loss, metrics), and the detached fp32 logp with `return_logp`."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, metrics, logp = FusedLoss.apply(hidden, weight, run)
    else:
        loss, metrics, _, _, logp = run(False, False)
    metrics = {name: metrics[i] for i, name in enumerate(METRIC_NAMES)}
    return (loss, metrics, logp) if return_logp else (loss, metrics)


def _torch_rows(hidden, weight, labels, old, adv, valid, tis_w, count, opts):
    """rows_fn for the chunked implementation: plain torch on an fp32 [n, V] logits chunk.
    `old` None: on-policy (old log-probs and the IS weight from the chunk's own logp)."""
    inv_t = 1.0 / opts["temperature"]
    rollout = opts["rollout_logp"]

    def rows(s, e, want_grad):
        logits = _chunk_logits(hidden[s:e], weight, opts["temperature"])
        lse = torch.logsumexp(logits, dim=-1)
        lab = labels[s:e]
        logp = logits.gather(1, lab[:, None]).squeeze(1) - lse
        if not want_grad:
            return logp, None
        if old is None:
            old_c, tis = on_policy_terms(logp, None if rollout is None else rollout[s:e],
                                         opts["tis_cap"])
        else:
            old_c, tis = old[s:e], (tis_w[s:e] if tis_w is not None else None)
        tis = tis if tis is not None else torch.ones((), device=logp.device)
        _, _, _, dloss = _loss_terms(logp, old_c, adv[s:e], valid[s:e], opts["clip_low"],
                                     opts["clip_high"], opts["clip_c"], tis)
        coef = dloss / count * inv_t  # d loss / d raw logit = g / T * (onehot - p)
        dlogits = logits.sub_(lse[:, None]).exp_().mul_(-coef[:, None])  # in place: -g p / T
        add_onehot_(dlogits, lab, coef)
        return logp, dlogits.to(hidden.dtype)

    return rows


def _torch_loss(logp, old, adv, valid, tis_w, count, opts) -> tuple[torch.Tensor, torch.Tensor]:
    tis = tis_w if tis_w is not None else torch.ones((), device=logp.device)
    per_token, ratio, log_ratio, _ = _loss_terms(logp, old, adv, valid, opts["clip_low"],
                                                 opts["clip_high"], opts["clip_c"], tis)
    metrics = loss_metrics(ratio, log_ratio, adv, valid, count, opts["clip_low"],
                           opts["clip_high"], opts["clip_c"])
    return per_token.sum() / count, torch.stack([metrics[k] for k in METRIC_NAMES])


def fused_policy_loss(hidden, weight, labels, old_logp, adv, mask, *, num_tokens,
                      clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float | None = None,
                      temperature: float = 1.0, rollout_logp=None, tis_cap: float | None = None,
                      return_logp: bool = False, chunk_tokens: int | None = None):
    """Chunked fused loss; see aster.kernels.fused_policy_loss. `chunk_tokens` overrides the
    rows per chunk (default FUSED_CHUNK_ELEMENTS // V)."""
    check_fused_args(hidden, weight, labels, old_logp, adv, mask, num_tokens, clip_low,
                     clip_high, clip_c, rollout_logp, tis_cap, temperature)
    old, adv_f, valid, tis_w = loss_inputs(old_logp, adv, mask, rollout_logp, tis_cap,
                                           hidden.device)
    count = token_count(num_tokens, hidden.device)
    opts = dict(clip_low=float(clip_low), clip_high=float(clip_high), clip_c=clip_c,
                temperature=float(temperature), tis_cap=tis_cap,
                rollout_logp=None if rollout_logp is None else rollout_logp.detach().float())
    labels = labels.long()
    chunk = chunk_rows(hidden.shape[0], weight.shape[0], chunk_tokens)

    def run(need_h, need_w):
        h, w = hidden.detach(), weight.detach()
        rows = _torch_rows(h, w, labels, old, adv_f, valid, tis_w, count, opts)
        logp, grad_h, grad_w = sweep(h, w, chunk, rows, need_h=need_h, need_w=need_w)
        old_all, tis_all = (old, tis_w) if old is not None else \
            on_policy_terms(logp, opts["rollout_logp"], tis_cap)
        loss, metrics = _torch_loss(logp, old_all, adv_f, valid, tis_all, count, opts)
        return loss, metrics, grad_h, grad_w, logp

    return apply(hidden, weight, run, return_logp)
