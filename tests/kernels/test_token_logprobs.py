"""token_logprobs: chunked and Triton (interpreter on CPU) against the float64 reference,
one test per known trap."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aster import kernels
from aster.kernels import chunked
from tests.kernels import _inputs
from tests.kernels._inputs import (
    assert_close,
    make_inputs,
    on_device,
    run_logprobs,
    run_reference,
)

triton_lp = pytest.importorskip("aster.kernels.triton.logprobs")

# Small tiles so the interpreter exercises many tiles, vocab splits, ragged edges and a short
# last launch group.
SMALL = triton_lp.LogprobBlocks(block_n=16, block_v=32, block_k=16, num_warps=1, num_stages=1,
                                programs_target=6, dlogits_bytes=1 << 12, group_n=2)
IMPLS = {
    "chunked": functools.partial(chunked.token_logprobs, chunk_tokens=7),
    "triton": functools.partial(triton_lp.token_logprobs, blocks=SMALL),
}
FP32 = dict(atol=2e-5, rtol=2e-4)  # fp32 softmax over <= ~1e3 logits of size ~3


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("n,h,v,temperature", [
    (1, 8, 5, 1.0),  # N=1, V smaller than one block
    (37, 24, 1001, 0.7),  # odd N, V not a multiple of the block, temperature < 1
    (64, 32, 256, 1.6),  # everything divides, temperature > 1
])
def test_matches_reference(impl, n, h, v, temperature):
    inputs = make_inputs(n, h, v, seed=n + v)
    got = run_logprobs(IMPLS[impl], *inputs, temperature=temperature)
    assert_close(got, run_reference(*inputs, temperature=temperature), what=impl, **FP32)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_qwen_vocab_with_non_dividing_block(impl):
    v = 151936
    blocks = triton_lp.LogprobBlocks(block_n=16, block_v=2048, block_k=16, num_warps=1,
                                     num_stages=1, programs_target=4, dlogits_bytes=1 << 20)
    assert v % blocks.block_v != 0
    fn = functools.partial(triton_lp.token_logprobs, blocks=blocks) if impl == "triton" \
        else chunked.token_logprobs
    inputs = make_inputs(3, 16, v, seed=3, scale=3.0)
    inputs[2][0] = v - 1  # the last column lives in the ragged final tile
    got = run_logprobs(fn, *inputs)
    assert_close(got, run_reference(*inputs), atol=5e-5, rtol=5e-4, what=impl)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_all_negative_logits(impl):
    hidden, weight, labels, g_lp, g_ent = make_inputs(20, 12, 77, seed=1)
    # A constant feature pushes every logit to about -1000: a running max started at 0
    # instead of -inf would underflow every exp to 0 and return -inf / nan.
    hidden[:, -1] = 1.0
    weight[:, -1] = -1000.0
    got = run_logprobs(IMPLS[impl], hidden, weight, labels, g_lp, g_ent)
    assert all(torch.isfinite(t).all() for t in got)
    want = run_reference(hidden, weight, labels, g_lp, g_ent)
    # The constant feature's hidden gradient is -1000 * sum(dlogits), exactly 0 but an fp32
    # cancellation of terms of size ~1000 (error ~1e-1); every other entry is well conditioned.
    got = (*got[:2], got[2][:, :-1], got[3])
    want = (*want[:2], want[2][:, :-1], want[3])
    # logits ~ -1000 carry fp32 rounding of ~6e-5 each; the softmax sees only differences.
    assert_close(got, want, atol=2e-3, rtol=1e-3, what=impl)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_peaked_distribution(impl):
    hidden, weight, labels, g_lp, g_ent = make_inputs(24, 16, 300, seed=2)
    hidden[:, -1] = 1.0
    weight[:, -1] = 0.0
    weight[7, -1] = 60.0  # token 7 dominates every row by ~60 nats
    labels[::2] = 7
    got = run_logprobs(IMPLS[impl], hidden, weight, labels, g_lp, g_ent)
    want = run_reference(hidden, weight, labels, g_lp, g_ent)
    assert_close(got, want, atol=1e-4, rtol=1e-4, what=impl)
    assert got[0][::2].abs().max() < 1e-5 and got[0][1::2].max() < -50
    assert got[1].max() < 1e-20 + 1e-6  # entropy of a one-hot-like distribution


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_bf16_inputs_accumulate_in_fp32(impl):
    # All-zero logits: the exact answer is logp = -log V, entropy = log V. Summing 4099 terms
    # of exp(0) in bf16 would stall at 256; fp32 accumulation is exact to ~1e-6.
    v = 4099
    hidden, weight, labels = on_device(torch.zeros(5, 16, dtype=torch.bfloat16),
                                       torch.randn(v, 16).to(torch.bfloat16), torch.arange(5))
    logp, ent = IMPLS[impl](hidden, weight, labels, return_entropy=True)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    logp, ent = logp.cpu(), ent.cpu()
    expect = torch.log(torch.tensor(float(v)))
    torch.testing.assert_close(logp, -expect.expand(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, expect.expand(5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_bf16_matches_reference(impl):
    inputs = make_inputs(33, 32, 515, dtype=torch.bfloat16, seed=5, scale=2.0)
    got = run_logprobs(IMPLS[impl], *inputs)
    want = run_reference(*inputs)
    # Triton keeps the logits in fp32 (error ~1e-6); the chunked path rounds its matmul output
    # to bf16 (relative 2**-8 on logits of size <= ~8: <= ~0.06 nats on logp). Gradients are
    # returned in bf16 (relative 2**-8).
    logit_tol = 2e-5 if impl == "triton" else 8e-2
    for name, a, b, atol in zip(("logp", "entropy"), got[:2], want[:2], (logit_tol,) * 2):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=name)
    for a, b in zip(got[2:], want[2:]):
        assert (a - b).abs().max() <= 0.05 * b.abs().max() + 1e-3


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_grad_paths(impl):
    hidden, weight, labels, _, _ = on_device(*make_inputs(9, 8, 50, seed=4))
    fn = IMPLS[impl]
    with torch.no_grad():  # old-policy log-probs: forward only
        old = fn(hidden, weight, labels)
    assert not old.requires_grad and old.shape == (9,)
    h = hidden.clone().requires_grad_(True)
    logp, _ent = fn(h, weight, labels, return_entropy=True)  # entropy unused: grad is None
    logp.sum().backward()
    h_ref = hidden.double().requires_grad_(True)
    kernels.reference.token_logprobs(h_ref, weight.double(), labels).sum().backward()
    torch.testing.assert_close(h.grad.double(), h_ref.grad, **FP32)


def test_chunking_does_not_change_results_and_bounds_memory():
    hidden, weight, labels, g_lp, g_ent = make_inputs(40, 8, 97, seed=6)
    one = run_logprobs(chunked.token_logprobs, hidden, weight, labels, g_lp, g_ent,
                       chunk_tokens=40)
    many = run_logprobs(chunked.token_logprobs, hidden, weight, labels, g_lp, g_ent,
                        chunk_tokens=3)
    assert_close(many, one, atol=1e-6, rtol=1e-5, what="chunk 3 vs 40")

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    with LargestOutput():
        run_logprobs(chunked.token_logprobs, hidden, weight, labels, g_lp, g_ent,
                     chunk_tokens=4)
    # Nothing bigger than one chunk's logits or the weight gradient; never [N, V] = 40 * 97.
    assert LargestOutput.largest <= max(4 * 97, 97 * 8) < 40 * 97


class _OpLog(TorchDispatchMode):
    """Records every aten op with the dtypes and sizes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = [t for t in (*args, *(kwargs or {}).values(),
                            *(out if isinstance(out, (tuple, list)) else (out,)))
                if isinstance(t, torch.Tensor)]
        self.calls.append((func.overloadpacket.__name__, [(t.dtype, t.numel()) for t in flat]))
        return out


def test_chunked_bf16_backward_stays_in_bf16_without_host_syncs():
    hidden, weight, labels, g_lp, g_ent = make_inputs(6, 32, 515, dtype=torch.bfloat16, seed=8)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    logp, ent = chunked.token_logprobs(h, w, labels, return_entropy=True, chunk_tokens=2)
    total = (logp * g_lp).sum() + (ent * g_ent).sum()
    log = _OpLog()
    with log:
        torch.autograd.grad(total, [h, w])
    names = [name for name, _ in log.calls]
    # torch.nonzero syncs the host with the device once per vocab slice.
    assert "nonzero" not in names
    # Both gradient matmuls take bf16 operands (BLAS accumulates in fp32) ...
    mms = [tensors for name, tensors in log.calls if name in ("mm", "addmm", "matmul")]
    assert len(mms) >= 4 and all(dt == torch.bfloat16 for t in mms for dt, _ in t)
    # ... and nothing fp32 as large as W [V, H] is ever made (no fp32 grad_W or copy of W).
    big_fp32 = [name for name, tensors in log.calls
                for dt, n in tensors if dt == torch.float32 and n >= weight.numel()]
    assert not big_fp32


def test_int64_offsets():
    # Rows past 2**31 / V: row * V overflows int32. The helper must widen before multiplying.
    stride = 151936
    row_start = 2**31 // stride - 3
    (out,) = on_device(torch.empty(16, dtype=torch.int64))
    triton_lp._offsets_probe_kernel[(1,)](out, row_start, stride, BLOCK=16)
    expect = (torch.arange(16, dtype=torch.int64) + row_start) * stride
    assert expect.max() > 2**31
    assert torch.equal(out.cpu(), expect)


@pytest.mark.parametrize("num_rows,num_cols,group", [(7, 5, 3), (128, 8, 16), (4, 9, 16)])
def test_grouped_launch_order(num_rows, num_cols, group):
    n_prog = num_rows * num_cols
    out = torch.empty(2 * n_prog, dtype=torch.int32)
    triton_lp._grouped_pid_probe_kernel[(n_prog,)](out, num_rows, num_cols, GROUP_N=group)
    pairs = [tuple(p) for p in out.view(-1, 2).tolist()]
    assert sorted(pairs) == [(r, c) for r in range(num_rows) for c in range(num_cols)]
    # Any window of consecutive programs as large as one group touches at most two groups of
    # row blocks: resident programs share hidden rows (the old row-fastest order touched
    # every row block within num_rows programs).
    window = min(group, num_rows) * num_cols
    for start in range(0, n_prog - window + 1):
        rows = {r for r, _ in pairs[start:start + window]}
        assert len(rows) <= 2 * group
        assert max(rows) - min(rows) < 2 * group
    first = pairs[:min(group, num_rows)]
    assert [r for r, _ in first] == list(range(min(group, num_rows)))  # rows fastest in a group
    assert {c for _, c in first} == {0}


def test_launch_order_does_not_change_results():
    inputs = make_inputs(37, 24, 301, seed=9)
    runs = [run_logprobs(functools.partial(triton_lp.token_logprobs,
                                           blocks=dataclasses.replace(SMALL, group_n=g)),
                         *inputs) for g in (1, 2, 64)]  # column-fastest, grouped, row-fastest
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_dispatch_and_errors(monkeypatch):
    from aster.backend import current_backend

    assert kernels.resolve_impl("auto") == current_backend().kernel_impl
    with pytest.raises(ValueError, match="reference, chunked, triton"):
        kernels.resolve_impl("cutlass")
    hidden, weight, labels, _, _ = make_inputs(4, 8, 10)
    with pytest.raises(ValueError, match="hidden size"):
        kernels.token_logprobs(hidden, weight[:, :4], labels, impl="chunked")
    with pytest.raises(ValueError, match="labels must lie"):
        kernels.token_logprobs(hidden, weight, labels + 10, impl="reference")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kernels.token_logprobs(hidden, weight, labels, impl="triton")


class _Stop(Exception):
    pass


def test_kernel_inputs_go_to_the_gpu_when_there_is_one(monkeypatch):
    # On a CUDA machine Triton compiles for the GPU and refuses CPU tensors, so every kernel
    # test hands its inputs over on kernel_device(); "meta" plays the GPU here.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _inputs.kernel_device() == torch.device("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # forced interpreter: CPU tensors
    assert _inputs.kernel_device() == torch.device("cpu")
    seen = []

    def spy(hidden, weight, labels, **kw):
        seen.append({hidden.device.type, weight.device.type, labels.device.type})
        raise _Stop

    monkeypatch.setattr(_inputs, "DEVICE", torch.device("meta"))
    with pytest.raises(_Stop):
        run_logprobs(spy, *make_inputs(3, 4, 5))
    assert seen == [{"meta"}]


def test_float64_goes_to_chunked_not_triton(monkeypatch, caplog):
    # Triton's tensor-core dot has no float64 (it does not compile on GPUs): the dispatcher
    # sends float64 to the chunked kernels and says so once.
    from aster.kernels import _ROUTED

    def no_triton(*args, **kwargs):
        raise AssertionError("float64 reached the Triton kernel")

    monkeypatch.setattr(triton_lp, "token_logprobs", no_triton)
    monkeypatch.setattr("aster.kernels.triton.token_logprobs", no_triton)
    _ROUTED.clear()
    hidden, weight, labels, _, _ = make_inputs(6, 8, 19, dtype=torch.float64, seed=8)
    with caplog.at_level("INFO", logger="aster"):
        got = kernels.token_logprobs(hidden, weight, labels, impl="triton")
        kernels.token_logprobs(hidden, weight, labels, impl="triton")
    want = chunked.token_logprobs(hidden, weight, labels)
    assert torch.equal(got, want)
    assert [r.getMessage() for r in caplog.records].count(
        "token_logprobs: float64 inputs run the chunked kernels, not Triton (Triton's "
        "tensor-core dot has no float64)") == 1


@pytest.mark.cuda
def test_triton_refuses_float64_on_the_gpu_in_one_line():
    hidden, weight, labels = on_device(*make_inputs(4, 16, 32, dtype=torch.float64)[:3])
    with pytest.raises(ValueError, match="no float64 path on GPUs"):
        triton_lp.token_logprobs(hidden, weight, labels)
