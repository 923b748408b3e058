"""Kernel benchmark: token_logprobs forward+backward per implementation, next to the naive
materialised-logits path in the same run; the GRPO loss on top of it, unfused
(`IMPL+loss`: token_logprobs then clipped_policy_loss) and fused (`fused-IMPL`:
fused_policy_loss, one sweep, 3 matmuls); on accelerators also `matmuls3`, the three bare
lm_head GEMMs (logits, grad_hidden, grad_W) in the vendor BLAS: the floor every row is
measured against.

    python bench/bench_kernels.py --device cpu [--quick] [--json out.json]

`run(backend, quick)` returns {"section": "kernels", "rows": [...], "notes": [...]} for
bench/throughput.py. Per row: fwd+bwd time, tokens/s, achieved TFLOP/s against the lm_head
matmul FLOPs (2*N*H*V per matmul, 3 for fwd+bwd: the fused paths really do 4, recomputing the
logits, but are credited 3 so rows compare work done), peak extra memory, and ratios to naive.

Peak extra memory: on CPU each case runs in a fresh subprocess and reports peak RSS
(ru_maxrss) minus the RSS after its inputs exist, so every temporary (including the BLAS's and
allocator slack) counts; on accelerators, max_memory_allocated minus the allocated bytes before
the call. The weight gradient ([V, H], produced by every path) is included in both.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

CPU_TARGET = (4096, 512, 151936)  # issue 3: chunked <= 1/10 naive memory, <= 1.2x naive time


def naive_token_logprobs(hidden, weight, labels):
    """The usual path: full [N, V] logits, log_softmax, gather (autograd keeps it all)."""
    logits = (hidden @ weight.t()).float()
    return torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)


def _loss_inputs(n: int, device):
    """old log-probs near a uniform distribution's, advantages of both signs, all unmasked."""
    gen = torch.Generator().manual_seed(1)
    old = (-12.0 + torch.randn(n, generator=gen)).to(device)
    adv = torch.randn(n, generator=gen).to(device)
    return old, adv, torch.ones(n, dtype=torch.bool, device=device)


def _fn(impl: str):
    if impl == "naive":
        return naive_token_logprobs
    from aster import kernels

    if impl.endswith("+loss"):
        def unfused(h, w, y):
            old, adv, mask = _loss_inputs(y.shape[0], y.device)
            logp = kernels.token_logprobs(h, w, y, impl=impl.removesuffix("+loss"))
            return kernels.clipped_policy_loss(logp, old, adv, mask, num_tokens=y.shape[0],
                                               impl=impl.removesuffix("+loss"))[0]
        return unfused
    if impl.startswith("fused-"):
        def fused(h, w, y):
            old, adv, mask = _loss_inputs(y.shape[0], y.device)
            return kernels.fused_policy_loss(h, w, y, old, adv, mask, num_tokens=y.shape[0],
                                             impl=impl.removeprefix("fused-"))[0]
        return fused
    return lambda h, w, y: kernels.token_logprobs(h, w, y, impl=impl)


def _inputs(n, h, v, dtype, device):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(device=device, dtype=dtype)
    return hidden, weight.requires_grad_(), torch.randint(0, v, (n,), generator=gen).to(device)


def _step(fn, hidden, weight, labels):
    hidden.grad = weight.grad = None
    if fn is None:  # matmuls3: the three lm_head GEMMs alone, no softmax, no autograd
        with torch.no_grad():
            logits = hidden @ weight.t()
            logits @ weight, logits.t() @ hidden
        return
    fn(hidden, weight, labels).sum().backward()


def measure_cpu_case(impl, n, h, v, dtype, repeats) -> dict:
    """One case in this (fresh) process: median fwd+bwd ms and peak extra RSS in MiB."""
    hidden, weight, labels = _inputs(n, h, v, getattr(torch, dtype), "cpu")
    with open("/proc/self/statm") as f:
        base_mib = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(_fn(impl), hidden, weight, labels)
        times.append((time.perf_counter() - t0) * 1e3)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"fwd_bwd_ms": statistics.median(times), "peak_extra_mem_mb": peak_mib - base_mib}


def _measure_cpu(impl, n, h, v, dtype, repeats) -> dict:
    args = json.dumps([impl, n, h, v, dtype, repeats])
    out = subprocess.run([sys.executable, __file__, "--child", args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_device(backend, impl, n, h, v, dtype, repeats) -> dict:
    mod = torch.get_device_module(backend.device_type)
    hidden, weight, labels = _inputs(n, h, v, getattr(torch, dtype), backend.device())
    fn = None if impl == "matmuls3" else _fn(impl)
    _step(fn, hidden, weight, labels)  # warm-up: compile, allocate grads
    hidden.grad = weight.grad = None
    mod.synchronize()
    mod.reset_peak_memory_stats()
    base = mod.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(fn, hidden, weight, labels)
        mod.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"fwd_bwd_ms": statistics.median(times),
            "peak_extra_mem_mb": (mod.max_memory_allocated() - base) / 2**20}


def _plan(backend, quick: bool):
    """(impls, [(N, H, V, dtype)]) for this device."""
    impls = ["naive", "chunked", "chunked+loss", "fused-chunked"]
    if backend.device_type == "cpu":
        shapes = [(512, 256, 151936, "float32")] if quick else \
            [(1024, 512, 151936, "float32"), (*CPU_TARGET, "float32")]
        return impls, shapes
    impls.insert(0, "matmuls3")
    if backend.capabilities.triton_kernels:
        impls += ["triton", "triton+loss", "fused-triton"]
    shapes = [(4096, 2560, 151936, "bfloat16")] if quick else \
        [(4096, 2560, 151936, "bfloat16"), (16384, 2560, 151936, "bfloat16"),
         (16384, 4096, 151936, "bfloat16")]
    return impls, shapes


def run(backend, quick: bool) -> dict:
    """Benchmark every implementation available on `backend`; see the module docstring."""
    impls, shapes = _plan(backend, quick)
    rows, notes = [], []
    for n, h, v, dtype in shapes:
        big = n * h * v > 2e11 and backend.device_type == "cpu"
        repeats = 1 if (quick or big) else 3
        naive = None
        for impl in impls:
            try:
                if backend.device_type == "cpu":
                    res = _measure_cpu(impl, n, h, v, dtype, repeats)
                else:
                    res = _measure_device(backend, impl, n, h, v, dtype, repeats)
            except (subprocess.CalledProcessError, RuntimeError) as exc:  # e.g. out of memory
                notes.append(f"{impl} N={n} H={h} V={v} {dtype} failed: {str(exc)[:200]}")
                continue
            row = _row(backend, impl, dtype, n, h, v, res, naive)
            naive = row if impl == "naive" else naive
            rows.append(row)
    notes += _notes(backend, rows)
    return {"section": "kernels", "rows": rows, "notes": notes}


def _row(backend, impl, dtype, n, h, v, res, naive) -> dict:
    secs = res["fwd_bwd_ms"] / 1e3
    flops = 3 * 2 * n * h * v
    row = {"impl": impl, "dtype": dtype, "N": n, "H": h, "V": v,
           "fwd_bwd_ms": round(res["fwd_bwd_ms"], 2), "tokens_per_s": round(n / secs, 1),
           "tflops": round(flops / secs / 1e12, 4),
           "peak_extra_mem_mb": round(res["peak_extra_mem_mb"], 1)}
    peak = backend.peak_flops(getattr(torch, dtype))
    if peak:
        row["pct_of_peak"] = round(100 * flops / secs / peak, 1)
    if naive is not None:
        row["time_vs_naive"] = round(row["fwd_bwd_ms"] / naive["fwd_bwd_ms"], 3)
        row["mem_vs_naive"] = round(row["peak_extra_mem_mb"] / max(naive["peak_extra_mem_mb"],
                                                                   1e-9), 4)
    return row


def _notes(backend, rows) -> list[str]:
    notes = ["memory: " + ("peak RSS of a fresh subprocess minus RSS after inputs"
                           if backend.device_type == "cpu" else
                           "max_memory_allocated minus allocated before the call"),
             "tflops credits 3 lm_head matmuls (2*N*H*V each); chunked/triton (and +loss) run "
             "4, fused-* and matmuls3 run 3",
             "IMPL+loss: token_logprobs then clipped_policy_loss; fused-IMPL: "
             "fused_policy_loss (the same loss and gradients in one sweep)"]
    if backend.device_type == "cpu":
        notes.append("triton is not benchmarked on CPU (the interpreter is for tests only)")
    for row in rows:
        if (row["impl"] == "chunked" and (row["N"], row["H"], row["V"]) == CPU_TARGET
                and backend.device_type == "cpu"):
            ok = row["mem_vs_naive"] <= 0.1 and row["time_vs_naive"] <= 1.2
            notes.append(f"CPU target (mem <= 0.1x, time <= 1.2x naive): mem "
                         f"{row['mem_vs_naive']}x, time {row['time_vs_naive']}x -> "
                         f"{'met' if ok else 'NOT met'}")
    return notes


def _table(result: dict) -> str:
    cols = ["impl", "dtype", "N", "H", "V", "fwd_bwd_ms", "tokens_per_s", "tflops",
            "peak_extra_mem_mb", "time_vs_naive", "mem_vs_naive"]
    lines = [" ".join(f"{c:>17}" for c in cols)]
    for row in result["rows"]:
        lines.append(" ".join(f"{row.get(c, ''):>17}" for c in cols))
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_cpu_case(*json.loads(args.child))))
        return 0
    from aster.backend import select_backend

    result = run(select_backend(args.device), args.quick)
    print(_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
