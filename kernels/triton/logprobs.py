"""Triton token log-probs: forward and backward kernels over (token, vocab) tiles.

Forward: each program owns BLOCK_N tokens and one vocab split; it computes logit tiles with
tl.dot over BLOCK_K slices of H (fp32 accumulation) and keeps an online logsumexp (running max
from -inf, rescaled sums) plus the sum of p*z for the entropy and the label's logit. The few
per-split partials [N, splits] are combined in torch. Nothing [N, V] is written.

Backward: for one vocab slice at a time, a kernel recomputes the logit tiles and writes
dlogits [N, Vc] (Vc chosen so the slice stays small); the two gradient GEMMs then run in the
vendor BLAS: grad_W[slice] = dlogits^T @ hidden is written once per slice (no cross-chunk
accumulation) and grad_hidden accumulates in fp32. Block sizes are arguments so that
triton-ascend can use smaller tiles; offsets are int64 because N*V passes 2**31 at real sizes.

Launch order (both kernels): a 1-D grid whose program ids are grouped as in Triton's matmul
tutorial (GROUP_SIZE_M): GROUP_N consecutive row blocks take turns fastest, then the vocab
axis moves, so the programs resident at one time share a few row blocks of hidden and a few
vocab tiles of W. Why, for H100 (132 SMs, one 8-warp 128x128 program each, 50 MiB L2,
3.35 TB/s HBM, 989 TFLOP/s dense bf16) at N=16384, H=2560, V=151936 in bf16:

- one row block of hidden is 128 x 2560 x 2 B = 640 KiB, one vocab tile of W the same; the
  K loop re-reads both for every (row block, vocab tile) pair. The logits cost
  2*N*V*H = 12.7 TFLOP = 12.9 ms of tensor-core time, per pass.
- row blocks fastest (the old order): forward grid 128 row blocks x 8 vocab splits, so the
  132 resident programs are all 128 row blocks of one split, each sweeping that split's 149
  tiles: 128 x 640 KiB = 80 MiB of hidden is live against 50 MiB of L2 and streams from HBM
  once per tile: 128 x 1187 x 640 KiB = 93 GiB = ~30 ms, 2.3x the compute time. The backward
  dlogits kernel (8192-column slices: 128 x 64 programs) had the same 80 MiB per wave, read
  64 times per slice: 95 GiB over the 19 slices.
- grouped, GROUP_N = 16: the resident programs are ~16 row blocks x 8 vocab splits (forward)
  or 16 row blocks x ~8 tiles (backward): 10 MiB of hidden + 5 MiB of W tiles live, which
  L2 holds. HBM traffic: hidden once (80 MiB; per slice in the backward, 1.5 GiB), W once
  per group of 16 row blocks (8 x 742 MiB = 5.8 GiB = 1.9 ms), plus the backward's dlogits
  writes (N x V x 2 B = 4.6 GiB): both kernels become compute-bound.

The order changes which programs run together, never what a program computes: results are
bitwise those of the old order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from aster.kernels._checks import check_logprobs_args


@dataclass(frozen=True)
class LogprobBlocks:
    """Tile sizes and launch settings (one fixed config: no autotune in the interpreter)."""

    block_n: int = 128
    block_v: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3
    programs_target: int = 1024  # aim for this many forward programs (vocab splits fill in)
    dlogits_bytes: int = 256 << 20  # size of one backward dlogits slice
    group_n: int = 16  # row blocks per launch group (see the module docstring)


# The interpreter pays per program, not per element: few wide tiles keep the tests fast.
INTERPRETER_BLOCKS = LogprobBlocks(block_n=16, block_v=4096, block_k=32, num_warps=1,
                                   num_stages=1, programs_target=8, dlogits_bytes=1 << 22,
                                   group_n=4)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_blocks() -> LogprobBlocks:
    return INTERPRETER_BLOCKS if interpreting() else LogprobBlocks()


@triton.jit
def row_offsets(rows, stride):
    """Element offset of each row: int64 first, since rows * stride overflows int32 once
    N*V > 2**31 (a 16K-token micro batch at V=151936 already does)."""
    return rows.to(tl.int64) * stride


@triton.jit
def _offsets_probe_kernel(out_ptr, row_start, stride, BLOCK: tl.constexpr):
    # Test hook: the offsets row_offsets gives for rows row_start .. row_start+BLOCK-1.
    rows = row_start + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.arange(0, BLOCK), row_offsets(rows, stride))


@triton.jit
def grouped_pid(pid, num_rows, num_cols, GROUP_N: tl.constexpr):
    """(row block, column) of program `pid` in a num_rows x num_cols launch: GROUP_N row
    blocks vary fastest, then the column, then the next group (Triton's matmul tutorial's
    GROUP_SIZE_M), so resident programs share row blocks and columns in L2."""
    per_group = GROUP_N * num_cols
    first_row = (pid // per_group) * GROUP_N
    rows_here = tl.minimum(num_rows - first_row, GROUP_N)  # the last group may be short
    in_group = pid % per_group
    return first_row + in_group % rows_here, in_group // rows_here


@triton.jit
def _grouped_pid_probe_kernel(out_ptr, num_rows, num_cols, GROUP_N: tl.constexpr):
    # Test hook: program pid writes the (row block, column) grouped_pid gives it.
    pid = tl.program_id(0)
    row, col = grouped_pid(pid, num_rows, num_cols, GROUP_N)
    tl.store(out_ptr + 2 * pid, row)
    tl.store(out_ptr + 2 * pid + 1, col)


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, inv_t,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] tile of logits / T; out-of-range vocab columns are -inf."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    h_base = row_offsets(rows, stride_h)
    w_base = row_offsets(cols, stride_w)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = tl.load(h_ptr + h_base[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        w = tl.load(w_ptr + w_base[None, :] + ks[:, None], mask=col_ok[None, :] & k_ok[:, None],
                    other=0.0)
        if PRECISION == "ieee":  # fp32 operands (and every dtype under the interpreter)
            acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:  # bf16/fp16 operands on tensor cores, fp32 accumulation
            acc = tl.dot(h, w, acc)
    return tl.where(col_ok[None, :], acc * inv_t, float("-inf"))


@triton.jit
def _logprobs_fwd_kernel(h_ptr, w_ptr, labels_ptr, max_ptr, sum_ptr, pz_ptr, zlab_ptr,
                         N, V, H, stride_h, stride_w, inv_t, v_per_prog, n_splits,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr, GROUP_N: tl.constexpr):
    pid_n, pid_v = grouped_pid(tl.program_id(0), tl.cdiv(N, BLOCK_N), n_splits, GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    # The running max starts at -inf, not 0: with all-negative logits a 0 start underflows.
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_pz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_label = tl.zeros((BLOCK_N,), dtype=tl.float32)
    v_start = pid_v * v_per_prog
    for v0 in range(0, v_per_prog, BLOCK_V):
        cols = v_start + v0 + tl.arange(0, BLOCK_V)
        col_ok = (cols < V) & (v0 + tl.arange(0, BLOCK_V) < v_per_prog)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                         inv_t, BLOCK_N, BLOCK_V, BLOCK_K, PRECISION)
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # a fully masked tile
        scale = tl.exp(run_max - safe_max)
        p = tl.exp(z - safe_max[:, None])
        run_sum = run_sum * scale + tl.sum(p, axis=1)
        run_pz = run_pz * scale + tl.sum(p * tl.where(col_ok[None, :], z, 0.0), axis=1)
        z_label += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
        run_max = new_max
    out = row_offsets(rows, n_splits) + pid_v
    tl.store(max_ptr + out, run_max, mask=row_ok)
    tl.store(sum_ptr + out, run_sum, mask=row_ok)
    tl.store(pz_ptr + out, run_pz, mask=row_ok)
    tl.store(zlab_ptr + out, z_label, mask=row_ok)


@triton.jit
def _logprobs_bwd_kernel(h_ptr, w_ptr, labels_ptr, lse_ptr, ent_ptr, glp_ptr, gent_ptr,
                         dz_ptr, N, V, H, v_lo, v_hi, stride_h, stride_w, stride_dz, inv_t,
                         HAS_GENT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                         BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, GROUP_N: tl.constexpr):
    """dlogits for vocab columns [v_lo, v_hi): dz = g_lp*(onehot - p) - g_ent*p*(log p + H)."""
    pid_n, pid_v = grouped_pid(tl.program_id(0), tl.cdiv(N, BLOCK_N),
                               tl.cdiv(v_hi - v_lo, BLOCK_V), GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    local = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = v_lo + local
    row_ok = rows < N
    col_ok = cols < v_hi
    z = _logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, inv_t,
                     BLOCK_N, BLOCK_V, BLOCK_K, PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    log_p = z - lse[:, None]
    p = tl.exp(log_p)
    coef = g_lp[:, None] + tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if HAS_GENT:
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        g_ent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
        coef += g_ent[:, None] * tl.where(col_ok[None, :], log_p + ent[:, None], 0.0)
    dz = -p * coef + tl.where(cols[None, :] == labels[:, None], g_lp[:, None], 0.0)
    ok = row_ok[:, None] & col_ok[None, :]
    dz = tl.where(ok, dz, 0.0)
    offs = row_offsets(rows, stride_dz)[:, None] + local[None, :]
    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=ok)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs use full-precision dots (tf32 would cost ~1e-3 relative on the logits); the
    # interpreter's numpy has no bf16 matmul, so it upcasts every dtype to fp32 first.
    return "ieee" if dtype == torch.float32 or interpreting() else "native"


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreting():
        raise ValueError("impl='triton' got CPU tensors without TRITON_INTERPRET=1; use "
                         "impl='chunked' on CPU, or set TRITON_INTERPRET=1 before importing "
                         "triton (tests)")


def _forward(hidden, weight, labels, inv_t, blocks: LogprobBlocks):
    n_tok, vocab, hsize = hidden.shape[0], weight.shape[0], hidden.shape[1]
    row_blocks = max(1, triton.cdiv(n_tok, blocks.block_n))
    vocab_tiles = triton.cdiv(vocab, blocks.block_v)
    n_splits = max(1, min(vocab_tiles, blocks.programs_target // row_blocks))
    v_per_prog = triton.cdiv(vocab_tiles, n_splits) * blocks.block_v
    n_splits = triton.cdiv(vocab, v_per_prog)
    parts = torch.empty((4, n_tok, n_splits), dtype=torch.float32, device=hidden.device)
    _logprobs_fwd_kernel[(row_blocks * n_splits,)](
        hidden, weight, labels, parts[0], parts[1], parts[2], parts[3], n_tok, vocab, hsize,
        hidden.stride(0), weight.stride(0), inv_t, v_per_prog, n_splits,
        BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_K=blocks.block_k,
        PRECISION=_precision(hidden.dtype), GROUP_N=blocks.group_n,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    run_max, run_sum, run_pz, z_label = parts
    top = run_max.max(dim=1).values
    scale = torch.exp(run_max - top[:, None])
    total = (run_sum * scale).sum(1)
    lse = top + torch.log(total)
    entropy = lse - (run_pz * scale).sum(1) / total
    return z_label.sum(1) - lse, lse, entropy


def _backward(hidden, weight, labels, lse, entropy, g_lp, g_ent, inv_t, need_h, need_w,
              blocks: LogprobBlocks):
    n_tok, vocab, hsize = hidden.shape[0], weight.shape[0], hidden.shape[1]
    dz_dtype = torch.float32 if hidden.dtype == torch.float32 else hidden.dtype
    elem = torch.finfo(dz_dtype).bits // 8
    v_chunk = max(blocks.block_v, blocks.dlogits_bytes // (max(n_tok, 1) * elem))
    v_chunk = min(triton.cdiv(v_chunk, blocks.block_v) * blocks.block_v, vocab)
    grad_h = torch.zeros((n_tok, hsize), dtype=torch.float32, device=hidden.device) \
        if need_h else None
    grad_w = torch.empty_like(weight) if need_w else None
    dz = torch.empty((n_tok, v_chunk), dtype=dz_dtype, device=hidden.device)
    for v_lo in range(0, vocab, v_chunk):
        v_hi = min(v_lo + v_chunk, vocab)
        grid = (triton.cdiv(n_tok, blocks.block_n) * triton.cdiv(v_hi - v_lo, blocks.block_v),)
        _logprobs_bwd_kernel[grid](
            hidden, weight, labels, lse, entropy, g_lp, g_ent if g_ent is not None else g_lp,
            dz, n_tok, vocab, hsize, v_lo, v_hi, hidden.stride(0), weight.stride(0),
            dz.stride(0), inv_t, HAS_GENT=g_ent is not None, BLOCK_N=blocks.block_n,
            BLOCK_V=blocks.block_v, BLOCK_K=blocks.block_k, PRECISION=_precision(hidden.dtype),
            GROUP_N=blocks.group_n, num_warps=blocks.num_warps, num_stages=blocks.num_stages)
        dz_s = dz[:, : v_hi - v_lo]
        if need_w:  # each vocab slice of grad_W is written exactly once
            torch.mm(dz_s.t(), hidden, out=grad_w[v_lo:v_hi])
            grad_w[v_lo:v_hi].mul_(inv_t)
        if need_h:
            grad_h.add_(dz_s @ weight[v_lo:v_hi], alpha=inv_t)
    return (None if grad_h is None else grad_h.to(hidden.dtype)), grad_w


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, return_entropy, blocks):
        hidden, weight, labels = hidden.contiguous(), weight.contiguous(), labels.contiguous()
        logp, lse, entropy = _forward(hidden, weight, labels, 1.0 / temperature, blocks)
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.inv_t, ctx.blocks, ctx.return_entropy = 1.0 / temperature, blocks, return_entropy
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        g_lp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float().contiguous()
        g_ent = grad_entropy.float().contiguous() \
            if (ctx.return_entropy and grad_entropy is not None) else None
        grad_h, grad_w = _backward(hidden, weight, labels, lse, entropy, g_lp, g_ent,
                                   ctx.inv_t, need_h, need_w, ctx.blocks)
        return grad_h, grad_w, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                   temperature: float = 1.0, return_entropy: bool = False,
                   blocks: LogprobBlocks | None = None):
    """Triton log p(label) [N] fp32 (and entropy [N]); see aster.kernels.token_logprobs.

    `blocks` overrides the tile sizes (default: GPU tiles, or small ones in the interpreter).
    """
    check_logprobs_args(hidden, weight, labels, temperature)
    _check_device(hidden)
    if hidden.dtype == torch.float64 and not interpreting():
        # A clear error instead of a Triton compile failure deep in the launch; the
        # aster.kernels dispatcher already sends float64 to the chunked kernels.
        raise ValueError("impl='triton' has no float64 path on GPUs (the tensor-core dot has "
                         "no float64); use impl='chunked' or 'reference' for float64")
    return _TritonTokenLogprobs.apply(hidden, weight, labels, float(temperature),
                                      bool(return_entropy), blocks or default_blocks())
