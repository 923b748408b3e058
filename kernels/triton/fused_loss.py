"""Triton fused_policy_loss: the chunked sweep of aster.kernels.fused with its row pass as one
Triton kernel.

Per chunk of rows: the logits [n, V] come from the vendor GEMM (fp32 output from bf16 operands
where torch offers it on the device, else the input dtype), then `_fused_rows_kernel` (one
program per row, Liger-Kernel's cross-entropy layout) reads the row twice: an online
logsumexp with the label's logit, then, with logp and the loss gradient g known in registers,
it writes dlogits = g * scale * (onehot - p) / T over the row (in place when the logits are
already in the input dtype). The two gradient GEMMs run in the vendor BLAS as in the chunked
sweep: three lm_head matmuls in all, and the elementwise work touches each logit twice.

Why not one Triton kernel for the whole sweep: dlogits needs the row's full-vocabulary
logsumexp, so a tile kernel would compute every logit tile twice (what token_logprobs'
backward does) or keep [n, V] in registers; the GEMMs themselves are what cuBLAS does best.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aster.kernels import fused
from aster.kernels._checks import LOG_RATIO_CLAMP, token_count
from aster.kernels.triton.logprobs import _check_device, interpreting
from aster.kernels.triton.policy_loss import clipped_policy_loss, token_loss_terms


@triton.jit
def _fused_rows_kernel(z_ptr, dz_ptr, labels_ptr, old_ptr, adv_ptr, mask_ptr, tis_ptr,
                       scale_ptr, logp_ptr, V, stride_z, stride_dz, inv_t, clip_low, clip_high,
                       clip_c, tis_cap, WANT_GRAD: tl.constexpr, HAS_DUAL: tl.constexpr,
                       HAS_TIS: tl.constexpr, ON_POLICY: tl.constexpr, CLAMP: tl.constexpr,
                       BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    label = tl.load(labels_ptr + row)
    run_max = float("-inf")
    run_sum = 0.0
    z_label = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_t
        new_max = tl.maximum(run_max, tl.max(z, axis=0))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        z_label += tl.sum(tl.where(cols == label, z, 0.0), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    logp = z_label - lse
    tl.store(logp_ptr + row, logp)
    if WANT_GRAD:
        valid = tl.load(mask_ptr + row) != 0
        adv = tl.load(adv_ptr + row).to(tl.float32)
        tis_w = 1.0
        if ON_POLICY:  # the old policy is this one: ratio 1; tis_ptr holds rollout log-probs
            old = logp
            if HAS_TIS:
                log_w = tl.minimum(tl.maximum(logp - tl.load(tis_ptr + row).to(tl.float32),
                                              -CLAMP), CLAMP)
                tis_w = tl.minimum(tl.exp(log_w), tis_cap)
        else:
            old = tl.load(old_ptr + row).to(tl.float32)
            if HAS_TIS:
                tis_w = tl.load(tis_ptr + row).to(tl.float32)
        _, dloss, _, _ = token_loss_terms(logp, old, adv, valid, tis_w, clip_low, clip_high,
                                          clip_c, HAS_DUAL, HAS_TIS, CLAMP)
        coef = dloss * tl.load(scale_ptr) * inv_t  # scale = 1 / num_tokens, read on device
        dz_row = dz_ptr + row * stride_dz
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            ok = cols < V
            z = tl.load(z_row + cols, mask=ok, other=0.0).to(tl.float32) * inv_t
            dz = tl.where(cols == label, coef, 0.0) - tl.exp(z - lse) * coef
            tl.store(dz_row + cols, dz.to(dz_ptr.dtype.element_ty), mask=ok)


def _block_v(vocab: int) -> int:
    # The interpreter pays per program step, not per element: one wide block per row.
    cap = 1 << 16 if interpreting() else 8192
    return min(cap, triton.next_power_of_2(max(vocab, 16)))


def _logits(hidden_chunk, weight, buffers: dict):
    """Raw logits [n, V]: fp32 from bf16/fp16 operands where the device's torch.mm takes
    out_dtype (CUDA, torch >= 2.8), else in the input dtype into a reused buffer."""
    if hidden_chunk.dtype in (torch.bfloat16, torch.float16) and hidden_chunk.is_cuda:
        try:
            return torch.mm(hidden_chunk, weight.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    n = hidden_chunk.shape[0]
    if "logits" not in buffers or buffers["logits"].shape[0] < n:
        buffers["logits"] = torch.empty((n, weight.shape[0]), dtype=hidden_chunk.dtype,
                                        device=hidden_chunk.device)
    return torch.mm(hidden_chunk, weight.t(), out=buffers["logits"][:n])


def _accumulate_w(grad_w, dlogits, hidden_chunk, *, first: bool):
    """grad_w (fp32) (+)= dlogits^T @ hidden_chunk: fp32 output straight from bf16 operands
    where the device's addmm takes out_dtype (no bf16 [V, H] product), else
    aster.kernels.fused's."""
    if grad_w.dtype != dlogits.dtype and grad_w.is_cuda:
        try:
            torch.addmm(grad_w, dlogits.t(), hidden_chunk, out_dtype=grad_w.dtype,
                        beta=0.0 if first else 1.0, out=grad_w)
            return
        except (TypeError, RuntimeError):
            pass
    fused.accumulate_grad_w(grad_w, dlogits, hidden_chunk, first=first)


def fused_policy_loss(hidden, weight, labels, old_logp, adv, mask, *, num_tokens,
                      clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float | None = None,
                      temperature: float = 1.0, rollout_logp=None, tis_cap: float | None = None,
                      return_logp: bool = False, chunk_tokens: int | None = None):
    """Triton fused loss; see aster.kernels.fused_policy_loss."""
    fused.check_fused_args(hidden, weight, labels, old_logp, adv, mask, num_tokens, clip_low,
                           clip_high, clip_c, rollout_logp, tis_cap, temperature)
    _check_device(hidden)
    on_policy = old_logp is None
    old, adv_f, valid, tis_w = fused.loss_inputs(old_logp, adv, mask, rollout_logp, tis_cap,
                                                 hidden.device)
    adv_f = adv_f.contiguous()
    rollout = None if rollout_logp is None else rollout_logp.detach().float().contiguous()
    # the kernel's old / IS-weight inputs; on-policy: old unread, the weight from the rollout's
    old_in = adv_f if on_policy else old.contiguous()
    tis_in = rollout if on_policy else tis_w
    valid_i8 = valid.to(torch.int8).contiguous()
    count = token_count(num_tokens, hidden.device)
    scale = (1.0 / count).reshape(1)
    labels = labels.contiguous()
    chunk = fused.chunk_rows(hidden.shape[0], weight.shape[0], chunk_tokens)
    block_v = _block_v(weight.shape[0])
    args = (float(clip_low), float(clip_high), 0.0 if clip_c is None else float(clip_c),
            0.0 if tis_cap is None else float(tis_cap))
    flags = dict(HAS_DUAL=clip_c is not None, HAS_TIS=tis_cap is not None, ON_POLICY=on_policy,
                 CLAMP=LOG_RATIO_CLAMP, BLOCK_V=block_v)
    inv_t = 1.0 / float(temperature)

    def run(need_h, need_w):
        h, w = hidden.detach().contiguous(), weight.detach().contiguous()
        buffers: dict = {}

        def rows(s, e, want):
            z = _logits(h[s:e], w, buffers)
            dz = z if z.dtype == h.dtype else torch.empty(z.shape, dtype=h.dtype,
                                                          device=z.device)
            logp = torch.empty(e - s, dtype=torch.float32, device=h.device)
            tis = tis_in[s:e] if tis_in is not None else old_in[s:e]
            _fused_rows_kernel[(e - s,)](
                z, dz, labels[s:e], old_in[s:e], adv_f[s:e], valid_i8[s:e], tis, scale, logp,
                w.shape[0], z.stride(0), dz.stride(0), inv_t, *args, WANT_GRAD=want,
                num_warps=1 if interpreting() else 8, **flags)
            return logp, (dz if want else None)

        logp, grad_h, grad_w = fused.sweep(h, w, chunk, rows, need_h=need_h, need_w=need_w,
                                           accumulate_w=_accumulate_w)
        with torch.no_grad():
            loss, metrics = clipped_policy_loss(logp, logp if on_policy else old, adv_f, valid,
                                                num_tokens=count, clip_low=clip_low,
                                                clip_high=clip_high, clip_c=clip_c,
                                                rollout_logp=rollout_logp, tis_cap=tis_cap)
        return (loss, torch.stack([metrics[k] for k in fused.METRIC_NAMES]), grad_h, grad_w,
                logp)

    return fused.apply(hidden, weight, run, return_logp)
