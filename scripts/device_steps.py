"""The steps of the GPU device check (scripts/device_check.sh runs each in its own process).

    python scripts/device_steps.py STEP[,STEP...] --out RESULT.json --work DIR [--smoke]

Each step writes {"status": ok|fail, "summary": one line, "details": {...}}. `--smoke` runs
the in-process steps on CPU at toy sizes (gloo instead of NCCL, Triton's interpreter), so their
code is exercised before a GPU lease is spent on them; the figures it prints mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = False  # set by --smoke: CPU, toy sizes


def _dev() -> str:
    return "cpu" if SMOKE else "cuda"


def _backend():
    from aster.backend import select_backend

    return select_backend("cpu", kernel_impl="triton") if SMOKE else select_backend("cuda")


def _sync() -> None:
    if not SMOKE:
        import torch

        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call (which also compiles Triton kernels)."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_flops() -> float | None:
    if SMOKE:
        return None
    import torch

    from aster.backends.cuda.backend import peak_bf16_flops_for

    return peak_bf16_flops_for(torch.cuda.get_device_name(0))


# ---- env -----------------------------------------------------------------------------------
def step_env(work: Path) -> dict:
    import torch
    import transformers
    import triton

    from aster.backends.common import has_module
    from aster.backends.cuda import probes

    be = _backend()
    details = {"torch": torch.__version__, "cuda": torch.version.cuda,
               "triton": triton.__version__, "transformers": transformers.__version__,
               "backend": be.describe(), "missing": [m for m in ("vllm", "flash_attn", "deepspeed",
                                                                 "math_verify")
                                                     if not has_module(m)]}
    gpu = "cpu (smoke)"
    if not SMOKE:
        props = torch.cuda.get_device_properties(0)
        gpu = props.name
        details.update(gpu=gpu, sms=props.multi_processor_count,
                       memory_gib=round(props.total_memory / 2**30, 1),
                       capability=f"{props.major}.{props.minor}",
                       peak_bf16_tflops=(_peak_flops() or 0) / 1e12,
                       probes={"vllm": probes.vllm_probe("cuda:0").reason,
                               "flash_attn": probes.flash_attn_probe("cuda:0").reason})
    summary = (f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton "
               f"{triton.__version__}, transformers {transformers.__version__}; kernels="
               f"{be.kernel_impl} engine={be.engine} attn={be.attn_implementation()}")
    return {"status": "ok", "summary": summary, "details": details}


# ---- pytest --------------------------------------------------------------------------------
def _pytest(work: Path, name: str, args: list[str]) -> dict:
    junit = work / f"{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
           "console_output_style=classic", f"--junitxml={junit}", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    counts, failed = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}, []
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        for case in ET.parse(junit).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = (f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
               f"{counts['skipped']} skipped")
    if failed:
        summary += "; failed: " + ", ".join(failed[:3]) + (" ..." if len(failed) > 3 else "")
    return {"status": "ok" if proc.returncode == 0 else "fail", "summary": summary,
            "details": {"command": " ".join(cmd[1:]), "failed": failed, **counts,
                        "output_tail": proc.stdout[-4000:]}}


def step_cuda_tests(work: Path) -> dict:
    return _pytest(work, "cuda_tests", ["-m", "cuda", "tests"])


def step_kernel_tests(work: Path) -> dict:
    # the cuda-marked ones among them ran in cuda_tests
    return _pytest(work, "kernel_tests", ["-m", "not cuda and not slow", "tests/kernels",
                                          "tests/parity/test_kernel_goldens.py"])


# ---- kernels -------------------------------------------------------------------------------
def _kernel_inputs(n: int, h: int, v: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) / h**0.5
    labels = torch.randint(0, v, (n,), generator=gen)
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return [t.to(_dev()) for t in (hidden, weight, labels, g_lp, g_ent)]


def _logprobs_and_grads(impl: str, hidden, weight, labels, g_lp, g_ent):
    import torch

    from aster import kernels

    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    logp, ent = kernels.token_logprobs(h, w, labels, return_entropy=True, impl=impl)
    gh, gw = torch.autograd.grad((logp * g_lp).sum() + (ent * g_ent).sum(), [h, w])
    return [t.detach().float() for t in (logp, ent, gh, gw)]


def step_kernel_parity(work: Path) -> dict:
    """Triton against the chunked kernels in fp32 on the same (dtype-rounded) values.
    Tolerances: fp32 logp/entropy 1e-4 abs (different summation orders over V=151936 terms);
    gradients relative to their largest entry, 1e-4 for fp32 and 1e-2 for bf16 inputs (Triton
    returns bf16 gradients: 2**-8 rounding)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    n, h, v = (64, 32, 1000) if SMOKE else (4096, 2560, 151936)
    hidden, weight, labels, g_lp, g_ent = _kernel_inputs(n, h, v)
    rows, ok = {}, True
    for dtype, value_tol, grad_tol in ((torch.float32, 1e-4, 1e-4),
                                       (torch.bfloat16, 1e-3, 1e-2)):
        hd, wd = hidden.to(dtype), weight.to(dtype)
        got = _logprobs_and_grads("triton", hd, wd, labels, g_lp, g_ent)
        want = _logprobs_and_grads("chunked", hd.float(), wd.float(), labels, g_lp, g_ent)
        errs = {name: (a - b).abs().max().item() / (1.0 if i < 2 else b.abs().max().item())
                for i, (name, a, b) in enumerate(zip(("logp", "entropy", "grad_hidden_rel",
                                                      "grad_weight_rel"), got, want))}
        good = all(errs[k] <= (value_tol if i < 2 else grad_tol) for i, k in enumerate(errs))
        rows[str(dtype).replace("torch.", "")] = {**errs, "ok": good}
        ok &= good
        del got, want
    summary = "; ".join(f"{d}: logp {r['logp']:.1e}, entropy {r['entropy']:.1e}, grads "
                        f"{max(r['grad_hidden_rel'], r['grad_weight_rel']):.1e} rel"
                        for d, r in rows.items())
    return {"status": "ok" if ok else "fail", "summary": f"N={n}: {summary}",
            "details": {"n": n, "h": h, "v": v, **rows}}


def step_kernel_tflops(work: Path) -> dict:
    """fwd+bwd of token_logprobs credited with the 3 lm_head matmuls (6*N*H*V FLOPs; these
    paths do 4, recomputing the logits in the backward), of fused_policy_loss (the GRPO loss
    and both gradients in one sweep: 3), next to cuBLAS doing exactly those 3 matmuls in bf16."""
    import torch

    from aster import kernels

    n, h, v = (64, 32, 1000) if SMOKE else (16384, 2560, 151936)
    hidden, weight, labels, _, _ = _kernel_inputs(n, h, v, seed=1)
    hidden = hidden.to(torch.bfloat16).requires_grad_(True)
    weight = weight.to(torch.bfloat16).requires_grad_(True)
    flops, peak = 6.0 * n * h * v, _peak_flops()

    def fused(impl):
        def run():
            hidden.grad = weight.grad = None
            kernels.token_logprobs(hidden, weight, labels, impl=impl).sum().backward()
        return run

    def cublas():
        with torch.no_grad():
            logits = hidden @ weight.t()
            logits @ weight  # grad_hidden = dlogits @ W
            logits.t() @ hidden  # grad_weight = dlogits^T @ hidden
            del logits

    # the GRPO update's fast path: loss + both gradients in one sweep (3 lm_head matmuls)
    old_logp = torch.full((n,), -float(torch.log(torch.tensor(float(v)))), device=labels.device)
    adv = torch.linspace(-1.0, 1.0, n, device=labels.device)
    mask = torch.ones(n, device=labels.device)

    def fused_loss(impl):
        def run():
            hidden.grad = weight.grad = None
            loss, _ = kernels.fused_policy_loss(hidden, weight, labels, old_logp, adv, mask,
                                                num_tokens=n, impl=impl)
            loss.backward()
        return run

    rows = {}
    for name, fn in (("triton", fused("triton")), ("chunked", fused("chunked")),
                     ("fused_loss_triton", fused_loss("triton")),
                     ("fused_loss_chunked", fused_loss("chunked")),
                     ("cublas_3_matmuls", cublas)):
        if not SMOKE:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = 0 if SMOKE else torch.cuda.memory_allocated()
        secs = _timed(fn, repeats=2 if SMOKE else 5)
        extra = 0 if SMOKE else (torch.cuda.max_memory_allocated() - base) / 2**30
        rows[name] = {"ms": secs * 1e3, "tflops": flops / secs / 1e12,
                      "pct_of_peak": None if peak is None else 100 * flops / secs / peak,
                      "peak_extra_gib": round(extra, 2)}
    fmt = ", ".join(f"{k} {r['tflops']:.0f} TFLOP/s ({r['ms']:.1f} ms"
                    + (f", {r['pct_of_peak']:.0f}% of peak)" if r["pct_of_peak"] else ")")
                    for k, r in rows.items())
    return {"status": "ok", "summary": f"N={n} bf16 fwd+bwd: {fmt}",
            "details": {"n": n, "h": h, "v": v, "flops_credited": flops,
                        "peak_bf16_flops": peak, **rows}}


# ---- collectives ---------------------------------------------------------------------------
def step_nccl(work: Path) -> dict:
    """A one-process group on the backend's collective, then aster's own collective calls:
    an AVG all-reduce of a GPU tensor and the trainers' all_reduce_sum (what
    TrainContext.all_reduce_sum runs) on a CPU float64 counter (as sft.py / rl.py call it),
    told it is distributed so the collective is really issued."""
    import socket

    import torch
    import torch.distributed as dist

    from aster.backend import DistInfo
    from aster.train.common import all_reduce_sum

    be = _backend()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    be.set_device()
    # the group exactly as the trainer makes it (Backend.process_group_backend: the
    # collective for device tensors, gloo for the trainers' CPU counters and objects)
    dist.init_process_group(backend=be.process_group_backend(), rank=0, world_size=1)
    checks = {}
    try:
        t = torch.full((4,), 3.0, device=be.device())
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        checks["all_reduce AVG (gpu fp32)"] = bool(torch.all(t == 3.0))
        forced = DistInfo(rank=0, local_rank=0, world_size=2)  # force the collective path
        for what, tensor in (("all_reduce_sum(cpu fp64 counter)",
                              torch.tensor([5.0], dtype=torch.float64)),
                             ("all_reduce_sum(gpu fp32)", torch.tensor([5.0], device=be.device()))):
            try:
                checks[what] = float(all_reduce_sum(forced, tensor).item()) == 5.0
            except Exception as exc:  # noqa: BLE001 - the point is to report it
                checks[what] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    finally:
        dist.destroy_process_group()
    ok = all(v is True for v in checks.values())
    summary = f"{be.process_group_backend()}: " + "; ".join(
        f"{k} {'ok' if v is True else ('WRONG' if v is False else v)}" for k, v in checks.items())
    return {"status": "ok" if ok else "fail", "summary": summary, "details": checks}


# ---- one SFT step at Qwen3-4B's size -------------------------------------------------------
QWEN3_4B = dict(  # Qwen/Qwen3-4B-Thinking-2507 config.json (configs/qwen3-4b.yaml's model)
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
    rope_theta=5000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
    hidden_act="silu")
TOY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=4096,
           tie_word_embeddings=True)


def _random_packs(vocab: int, tokens: int, seq_len: int):
    """Encoded conversations (ids, loss mask: the second half of each is 'assistant')."""
    import torch

    from aster.train.sft import Encoded

    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(tokens // seq_len):
        ids = torch.randint(0, vocab, (seq_len,), generator=gen).tolist()
        out.append(Encoded(ids, [0] * (seq_len // 2) + [1] * (seq_len - seq_len // 2)))
    return out


def _planned_peak_gib(shape: dict, tokens: int, kernel_impl: str) -> float:
    """aster plan's figure for this step: its first update (AdamW's moments appear at the
    optimizer step) on one device, strategy none, bf16 autocast, gradient checkpointing."""
    from aster.plan import GiB, first_step_peak, shape_from_hf_config, update_terms
    from aster.train.config import DistributedConfig

    model = shape_from_hf_config(shape, "step", "scripts/device_steps.py")
    terms = update_terms(model, tokens, "none", 1, DistributedConfig(strategy="none"), 2, True,
                         kernel_impl)
    return first_step_peak(terms) / GiB


def step_sft_qwen3_4b(work: Path) -> dict:
    """The SFT path (PolicyForward + aster's kernels + sft_micro_loss + AdamW step) on one
    16K-token pack of 8 sequences, with the model built the way load_policy builds one (fp32
    master weights and AdamW state, model.dtype=bfloat16 as the compute dtype under autocast,
    the backend's attention, gradient checkpointing as configs/qwen3-4b.yaml sets it), from
    random weights. One GPU, strategy none: 16 bytes per parameter before activations."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from aster.algo.loss import PolicyForward
    from aster.train.common import build_optimizer, optimizer_step
    from aster.train.precision import MASTER_DTYPE, compute_dtype
    from aster.train.sft import collate_packed, count_trained, sft_micro_loss

    be = _backend()
    shape, tokens, seq_len = (TOY, 512, 128) if SMOKE else (QWEN3_4B, 16384, 2048)
    dtype = compute_dtype("bfloat16", be)
    cfg = Qwen3Config(**shape, attn_implementation=be.attn_implementation(packed=True))
    t0 = time.perf_counter()
    with torch.device(be.device()):
        model = Qwen3ForCausalLM(cfg).to(MASTER_DTYPE)
    model = be.prepare_model(model).to(be.device())
    model.gradient_checkpointing_enable()
    model.train()
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0
    policy = PolicyForward(model, be.kernel_impl, dtype)
    optimizer = build_optimizer(model, 3e-5, 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    packs = _random_packs(shape["vocab_size"], tokens, seq_len)
    batch = collate_packed(packs, be.device())
    num_tokens = float(count_trained(packs))
    if not SMOKE:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = sft_micro_loss(policy, batch, num_tokens)
    loss.backward()
    _sync()
    fwd_bwd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grad_norm = optimizer_step(model, optimizer, scheduler, 1.0, loss.item(), "sft", None)
    _sync()
    opt_s = time.perf_counter() - t0
    peak = None if SMOKE else torch.cuda.max_memory_allocated() / 2**30
    planned = _planned_peak_gib(shape, tokens, be.kernel_impl)
    flops = 6.0 * params * tokens  # the usual convention; recompute and attention not counted
    mfu = None if _peak_flops() is None else flops / fwd_bwd_s / _peak_flops()
    details = {"params": params, "tokens": tokens, "sequences": len(packs), "dtype": str(dtype),
               "attn_implementation": cfg._attn_implementation, "loss": loss.item(),
               "grad_norm": grad_norm, "build_s": build_s, "fwd_bwd_s": fwd_bwd_s,
               "optimizer_s": opt_s, "peak_mem_gib": peak, "tokens_per_s": tokens / fwd_bwd_s,
               "mfu_6PT": mfu, "param_dtype": str(next(model.parameters()).dtype),
               "planned_peak_gib": planned}
    ok = torch.isfinite(loss).item() and grad_norm == grad_norm
    summary = (f"{params / 1e9:.2f}B params, {tokens} tokens: loss {loss.item():.3f}, fwd+bwd "
               f"{fwd_bwd_s:.2f} s ({tokens / fwd_bwd_s:,.0f} tok/s"
               + (f", MFU {100 * mfu:.0f}% by 6PT" if mfu else "") + f"), optimizer "
               f"{opt_s:.2f} s, peak " + (f"{peak:.1f} GiB" if peak is not None else "n/a")
               + f" (aster plan: {planned:.1f} GiB)")
    return {"status": "ok" if ok else "fail", "summary": summary, "details": details}


# ---- the aster CLI ---------------------------------------------------------------------------
def _aster(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "aster"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                          "import sys; from aster.cli import main; "
                                          "sys.exit(main())"]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True)


def step_parity_record(work: Path) -> dict:
    record = work / "parity_cuda.json"
    golden = REPO / "tests" / "parity" / "golden" / "steps_cpu_reference.json"
    rec = _aster("parity", "record", "--device", "cuda", "--out", str(record))
    if rec.returncode != 0:
        return {"status": "fail", "summary": f"record exited {rec.returncode}: "
                f"{(rec.stderr.strip().splitlines() or [''])[-1][:160]}",
                "details": {"output_tail": (rec.stdout + rec.stderr)[-4000:]}}
    cmp = _aster("parity", "compare", str(golden), str(record))
    within = re.search(r"(\d+ of \d+ quantities within tolerance[^\n]*)", cmp.stdout)
    notes = re.findall(r"not compared: ([^\n]*)", cmp.stdout)
    bad = [ln.split()[1] for ln in cmp.stdout.splitlines() if ln.rstrip().endswith(" NO")]
    summary = (within.group(1) if within else f"compare exited {cmp.returncode}") + (
        f"; out: {', '.join(bad[:4])}" if bad else "") + (f"; {'; '.join(notes)}" if notes else "")
    return {"status": "ok" if cmp.returncode == 0 and not notes else "fail", "summary": summary,
            "details": {"record": json.loads(record.read_text()), "compare": cmp.stdout[-6000:]}}


def step_train_tiny_ci(work: Path) -> dict:
    out = work / "tiny-ci"
    t0 = time.perf_counter()
    run = _aster("train", "--config", "tiny-ci", "--device", "cuda", "--output-dir", str(out),
                 "model.dtype=bfloat16")
    wall = time.perf_counter() - t0
    summary_file = out / "summary.json"
    if run.returncode != 0 or not summary_file.exists():
        tail = (run.stderr.strip().splitlines() or [""])[-1][:200]
        return {"status": "fail", "summary": f"exited {run.returncode} after {wall:.0f} s: {tail}",
                "details": {"output_tail": (run.stdout + run.stderr)[-4000:]}}
    summary = json.loads(summary_file.read_text())
    stages = [s for s in ("sft", "rl_stage1", "rl_stage2") if s in summary]
    text = ", ".join(f"{s} {100 * summary[s]['accuracy']:.0f}% / {summary[s]['tool_calls_mean']:.2f}"
                     f" calls" for s in stages)
    return {"status": "ok", "summary": f"{wall:.0f} s wall; held-out accuracy / tool calls: {text}",
            "details": {"wall_s": wall, "summary": summary}}


STEP_FUNCS = {"env": step_env, "cuda_tests": step_cuda_tests, "kernel_tests": step_kernel_tests,
              "kernel_parity": step_kernel_parity, "kernel_tflops": step_kernel_tflops,
              "nccl": step_nccl, "sft_qwen3_4b": step_sft_qwen3_4b,
              "parity_record": step_parity_record, "train_tiny_ci": step_train_tiny_ci}
SMOKE_STEPS = ("env", "kernel_parity", "kernel_tflops", "nccl", "sft_qwen3_4b")


def run(names: list[str], work: Path) -> dict:
    """Run steps in this process; one result dict per step name."""
    results = {}
    for name in names:
        try:
            results[name] = STEP_FUNCS[name](work)
        except Exception as exc:  # noqa: BLE001 - a step reports, it never takes the rest down
            lines = str(exc).strip().splitlines()
            results[name] = {"status": "fail",
                             "summary": f"{type(exc).__name__}: {lines[0][:200] if lines else ''}",
                             "details": {}}
    return results


def main(argv=None) -> int:
    global SMOKE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("steps", help=f"comma-separated: {', '.join(STEP_FUNCS)}")
    p.add_argument("--out", required=True, help="the result JSON to write")
    p.add_argument("--work", default=".", help="a scratch directory")
    p.add_argument("--smoke", action="store_true", help="CPU, toy sizes (" +
                   ", ".join(SMOKE_STEPS) + ")")
    args = p.parse_args(argv)
    names = [n for n in args.steps.split(",") if n]
    bad = [n for n in names if n not in STEP_FUNCS or (args.smoke and n not in SMOKE_STEPS)]
    if bad:
        print(f"device_steps: no step {bad[0]!r}" + (" in --smoke" if args.smoke else ""),
              file=sys.stderr)
        return 2
    SMOKE = args.smoke
    if SMOKE:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    results = run(names, Path(args.work))
    payload = results[names[0]] if len(names) == 1 else results
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
