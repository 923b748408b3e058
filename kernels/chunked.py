"""Portable chunked kernels in plain torch (the CPU and NPU default).

token_logprobs never holds more than one chunk of logits: the forward walks token chunks
([n, V] logits -> logsumexp, label logit, entropy), the backward walks vocab slices ([N, Vs]
logits recomputed, turned into dlogits in place, fed to two matmuls). Peak extra memory is
O(CHUNK_ELEMENTS + V*H) instead of O(N*V). The backward recomputes the logits (4 lm_head
matmuls in all instead of 3) because the upstream gradients of logp and entropy are arbitrary
and unknown at forward time; for the GRPO loss, whose gradient is known in closed form,
aster.kernels.fused_policy_loss (kernels/fused.py) does it in 3.
"""

from __future__ import annotations

import torch

from aster.kernels._checks import check_logprobs_args, check_loss_args, token_count
from aster.kernels._loss_math import (
    LOG_RATIO_CLAMP,
    clipped_token_loss,
    loss_metrics,
    ratio_terms,
    tis_weight,
)

# Elements of one chunk's [n, V] fp32 logits: 2**24 (64 MiB) keeps two live chunk buffers well
# under a tenth of the naive path's memory at V=151936 while the matmuls stay large enough
# (n >= 64 rows) to run near BLAS speed.
CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(num_tokens: int, vocab: int, chunk_tokens: int | None) -> int:
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1; got {chunk_tokens}")
        return chunk_tokens
    return max(1, min(num_tokens, CHUNK_ELEMENTS // max(vocab, 1)))


def _chunk_logits(hidden_chunk: torch.Tensor, weight: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """fp32 [n, V] logits / temperature. The matmul runs in the input dtype (BLAS accumulates
    bf16 products in fp32); everything after it is fp32."""
    logits = (hidden_chunk @ weight.t()).float()
    if temperature != 1.0:
        logits.mul_(1.0 / temperature)
    return logits


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, return_entropy, chunk_tokens):
        n_tok = hidden.shape[0]
        step = _chunk_rows(n_tok, weight.shape[0], chunk_tokens)
        labels = labels.long()
        logp = torch.empty(n_tok, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp)
        for s in range(0, n_tok, step):
            e = min(s + step, n_tok)
            logits = _chunk_logits(hidden[s:e], weight, temperature)
            lse_c = torch.logsumexp(logits, dim=-1)
            lse[s:e] = lse_c
            logp[s:e] = logits.gather(1, labels[s:e, None]).squeeze(1) - lse_c
            if return_entropy:
                log_probs = logits.sub_(lse_c[:, None])  # in place: no second [n, V] buffer
                # -sum(p * log p), the product in place: torch's cascaded sum keeps fp32
                # accurate over 150K terms (a BLAS dot product accumulating serially did not).
                entropy[s:e] = -torch.exp(log_probs).mul_(log_probs).sum(-1)
            del logits
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.return_entropy = return_entropy
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        g_lp = grad_logp.float() if grad_logp is not None else torch.zeros_like(lse)
        g_ent = grad_entropy.float() if (ctx.return_entropy and grad_entropy is not None) \
            else None
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        # The backward walks *vocab* slices over all tokens: each slice of grad_W is written
        # once (a token-chunk walk would re-read and re-write all of grad_W per chunk, which is
        # memory-bound at V=151936) and grad_hidden [N, H] accumulates cheaply.
        step = max(1, CHUNK_ELEMENTS // max(n_tok, 1)) if ctx.chunk_tokens is None \
            else max(1, ctx.chunk_tokens * vocab // max(n_tok, 1))
        # Both gradient matmuls run in the input dtype (BLAS accumulates bf16 products in
        # fp32): grad_W is written straight into a [V, H] tensor of weight's dtype, one slice at
        # a time, so bf16 inputs never get an fp32 copy of W or of hidden. Only grad_hidden,
        # summed over vocab slices, accumulates in fp32 ([N, H], small next to [V, H]).
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        grad_h = torch.zeros(hidden.shape, dtype=acc_dtype, device=hidden.device) \
            if need_h else None
        grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) \
            if need_w else None
        for v0 in range(0, vocab, step):
            v1 = min(v0 + step, vocab)
            dlogits = _dlogits_slice(hidden, weight[v0:v1], labels - v0, lse, entropy, g_lp,
                                     g_ent, ctx.temperature)
            dlogits = dlogits.mul_(1.0 / ctx.temperature).to(hidden.dtype)  # d/d(raw logits)
            if need_w:
                torch.mm(dlogits.t(), hidden, out=grad_w[v0:v1])
            if need_h:
                grad_h.add_(dlogits @ weight[v0:v1])
            del dlogits
        return (None if grad_h is None else grad_h.to(hidden.dtype), grad_w,
                None, None, None, None)


def _dlogits_slice(hidden, weight_slice, local_labels, lse, entropy, g_lp, g_ent, temperature):
    """d(loss)/d(z) [N, Vs] for one vocab slice (z = logits / temperature), reusing the
    recomputed logits' buffer: dz = g_lp * (onehot - p) - g_ent * p * (log p + H)."""
    log_probs = _chunk_logits(hidden, weight_slice, temperature).sub_(lse[:, None])
    probs = torch.exp(log_probs)
    if g_ent is not None:
        coef = log_probs.add_(entropy[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None])
        dlogits = probs.mul_(coef).neg_()
    else:
        dlogits = probs.mul_(g_lp[:, None]).neg_()
    del log_probs
    add_onehot_(dlogits, local_labels, g_lp)
    return dlogits


def add_onehot_(dlogits: torch.Tensor, local_labels: torch.Tensor, values: torch.Tensor):
    """dlogits[i, local_labels[i]] += values[i] where the label falls in this slice's columns.

    Shapes only, no torch.nonzero (a host sync per slice on an accelerator): rows whose label
    lies outside the slice add 0 at a clamped column. gather + scatter_ (one column per row,
    no duplicates) rather than scatter_add_, which is nondeterministic on CUDA."""
    width = dlogits.shape[1]
    in_slice = (local_labels >= 0) & (local_labels < width)
    col = local_labels.clamp(0, width - 1)[:, None]
    add = torch.where(in_slice, values, torch.zeros_like(values)).to(dlogits.dtype)[:, None]
    dlogits.scatter_(1, col, dlogits.gather(1, col) + add)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   temperature: float = 1.0, return_entropy: bool = False,
                   chunk_tokens: int | None = None):
    """Chunked log p(label) [N] fp32 (and entropy [N]); see aster.kernels.token_logprobs.

    `chunk_tokens` overrides the rows per chunk (default: CHUNK_ELEMENTS // V).
    """
    check_logprobs_args(hidden, weight, labels, temperature)
    return _TokenLogprobs.apply(hidden, weight, labels, float(temperature), bool(return_entropy),
                                chunk_tokens)


def _loss_terms(logp, old_logp, adv, valid, clip_low, clip_high, clip_c, tis_w):
    """fp32 per-token loss, ratio, log-ratio and d(per-token loss)/d(logp) (unmasked)."""
    log_ratio, ratio = ratio_terms(logp, old_logp)
    per_token = clipped_token_loss(ratio, adv, clip_low, clip_high, clip_c)
    # The gradient flows only where the unclipped term wins and the log-ratio is not clamped.
    live = ~(((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low)))
    live &= log_ratio.abs() < LOG_RATIO_CLAMP
    if clip_c is not None:
        live &= ~((adv < 0) & (ratio > clip_c))
    dloss = torch.where(live & valid, -adv * ratio * tis_w, torch.zeros_like(ratio))
    per_token = torch.where(valid, per_token * tis_w, torch.zeros_like(per_token))
    return per_token, ratio, log_ratio, dloss


class _ClippedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, old_logp, adv, valid, count, clip_low, clip_high, clip_c, tis_w):
        per_token, ratio, log_ratio, dloss = _loss_terms(
            logp.float(), old_logp.float(), adv.float(), valid, clip_low, clip_high, clip_c,
            tis_w)
        ctx.save_for_backward(dloss, count)
        ctx.logp_dtype = logp.dtype
        ctx.mark_non_differentiable(ratio, log_ratio)
        return per_token.sum() / count, ratio, log_ratio

    @staticmethod
    def backward(ctx, grad_loss, _grad_ratio, _grad_log_ratio):
        dloss, count = ctx.saved_tensors
        grad = (dloss * (grad_loss / count)).to(ctx.logp_dtype)
        return grad, None, None, None, None, None, None, None, None


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, num_tokens, clip_low: float = 0.2,
                        clip_high: float = 0.28, clip_c: float | None = None,
                        rollout_logp: torch.Tensor | None = None, tis_cap: float | None = None):
    """Token-mean clipped loss with a closed-form backward (saves one [tokens] tensor);
    see aster.kernels.clipped_policy_loss."""
    check_loss_args(logp, old_logp, advantages, mask, num_tokens, clip_low, clip_high, clip_c,
                    rollout_logp, tis_cap)
    valid = mask.bool()
    count = token_count(num_tokens, logp.device)
    old, adv = old_logp.detach().float(), advantages.detach().float()
    tis_w = torch.ones((), dtype=torch.float32, device=logp.device)
    if tis_cap is not None:
        tis_w = tis_weight(old, rollout_logp.float(), tis_cap)
    loss, ratio, log_ratio = _ClippedLoss.apply(logp, old, adv, valid, count, clip_low,
                                                clip_high, clip_c, tis_w)
    metrics = loss_metrics(ratio, log_ratio, adv, valid, count, clip_low, clip_high, clip_c)
    return loss, metrics
