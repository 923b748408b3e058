"""The device check's driver (run it through scripts/device_check.sh, which installs aster).

Runs each step of scripts/device_steps.py in its own process under `timeout` (a hung or
crashed step is reported, never fatal), inside one overall time budget; prints one table and
writes one JSON record. Standard library only, so the dry run needs nothing installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS_PY = REPO / "scripts" / "device_steps.py"


@dataclass(frozen=True)
class Step:
    name: str
    timeout_s: int
    what: str


# In order of value: the later steps are the ones the budget cuts first.
STEPS = (
    Step("env", 90, "torch / CUDA / GPU / triton / transformers versions, aster's backend and "
                    "its feature probes"),
    Step("cuda_tests", 200, "pytest -m cuda tests (every cuda-marked test)"),
    Step("kernel_tests", 200, "pytest tests/kernels tests/parity/test_kernel_goldens.py on the "
                              "GPU (those not cuda-marked: cuda_tests ran those)"),
    Step("kernel_parity", 90, "Triton vs chunked fp32 token_logprobs (values, entropy, grads), "
                              "N=4096 H=2560 V=151936, fp32 and bf16 inputs"),
    Step("kernel_tflops", 180, "fused log-prob fwd+bwd TFLOP/s, N=16384 H=2560 V=151936 bf16, "
                               "next to cuBLAS's three lm_head matmuls and chunked"),
    Step("nccl", 90, "1-process NCCL group through aster's collectives (GPU tensor average, "
                     "the trainers' CPU float64 counters)"),
    Step("sft_qwen3_4b", 240, "one packed SFT step of a random Qwen3-4B (36 layers, hidden 2560, "
                              "vocab 151936) at 16K tokens, bf16, gradient checkpointing, sdpa"),
    Step("parity_record", 150, "aster parity record --device cuda vs the CPU goldens "
                               "(tests/parity/golden/steps_cpu_reference.json)"),
    Step("train_tiny_ci", 240, "aster train --config tiny-ci --device cuda model.dtype=bfloat16"),
)
RESERVE_S = 10  # kept back from the budget for writing the record


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def run_step(step: Step, timeout_s: int, work: Path) -> dict:
    """One step in its own process group under coreutils `timeout` (SIGTERM, then SIGKILL 10 s
    later); its result is the JSON file it writes."""
    out = work / f"{step.name}.json"
    cmd = [sys.executable, str(STEPS_PY), step.name, "--out", str(out), "--work", str(work)]
    if shutil.which("timeout"):
        cmd = ["timeout", "-k", "10", str(timeout_s), *cmd]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout_s + 30, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, log = 124, str(exc.stdout or "") + str(exc.stderr or "")
    seconds = round(time.perf_counter() - start, 1)
    (work / f"{step.name}.log").write_text(log)
    if out.exists():
        result = json.loads(out.read_text())
    elif rc in (124, 137):
        result = {"status": "timeout", "summary": f"killed after {timeout_s} s"}
    else:
        tail = [ln for ln in log.strip().splitlines() if ln.strip()][-1:] or [f"exit {rc}"]
        result = {"status": "fail", "summary": tail[0][:200]}
    result.setdefault("details", {})
    if result["status"] != "ok":
        result["details"]["log_tail"] = log[-3000:]
    return {"step": step.name, "seconds": seconds, **result}


def format_table(results: list[dict]) -> str:
    head = f"{'step':14} {'status':8} {'time':>7}  result"
    lines = [head, "-" * 100]
    for r in results:
        secs = f"{r['seconds']:.0f} s" if r.get("seconds") is not None else "-"
        lines.append(f"{r['step']:14} {r['status']:8} {secs:>7}  {r['summary']}")
    return "\n".join(lines)


def write_json(record: dict, path: Path) -> None:
    """Atomic: temp file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "device_check.json"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return REPO / "bench" / "results" / f"device_check-{stamp}.json"


def parse_args(argv):
    p = argparse.ArgumentParser(description="aster's prepared GPU check (use "
                                "scripts/device_check.sh): one table, one JSON record.")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: every step reports 'skipped: no GPU' (exit 0)")
    p.add_argument("--budget-s", type=int, default=450,
                   help="overall time budget in seconds (default 450); steps that would not "
                        "fit are reported as skipped")
    p.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    p.add_argument("--out", default=None, help="the JSON record (default $OUT/device_check.json, "
                                               "else bench/results/device_check-<time>.json)")
    p.add_argument("--list", action="store_true", help="list the steps and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in STEPS:
            print(f"{s.name:14} (<= {s.timeout_s:3d} s) {s.what}")
        return 0
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in {s.name for s in STEPS}]
    if unknown:
        print(f"device_check: unknown step {unknown[0]!r}; see --list", file=sys.stderr)
        return 2
    steps = [s for s in STEPS if not only or s.name in only]
    start, results = time.perf_counter(), []
    work = None if args.dry_run else Path(tempfile.mkdtemp(prefix="aster-device-check-"))
    for step in steps:
        left = args.budget_s - RESERVE_S - (time.perf_counter() - start)
        if args.dry_run:
            results.append({"step": step.name, "status": "skipped", "seconds": None,
                            "summary": "skipped: no GPU", "details": {"what": step.what}})
        elif left < 20:
            results.append({"step": step.name, "status": "skipped", "seconds": None,
                            "summary": f"skipped: time budget ({args.budget_s} s) spent",
                            "details": {"what": step.what}})
        else:
            print(f"device_check: {step.name} (<= {min(step.timeout_s, int(left))} s) ...",
                  flush=True)
            results.append(run_step(step, min(step.timeout_s, int(left)), work))
    record = {"kind": "aster-device-check", "dry_run": args.dry_run, "git_commit": git_commit(),
              "host": platform.node(), "python": platform.python_version(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget_s, "wall_s": round(time.perf_counter() - start, 1),
              "work_dir": str(work or ""), "steps": results}
    out = Path(args.out) if args.out else default_out()
    write_json(record, out)
    print(format_table(results))
    print(f"device_check: {len(results)} steps in {record['wall_s']:.0f} s; record written to "
          f"{out}" + (f"; step logs in {work}" if work else ""))
    bad = [r["step"] for r in results if r["status"] in ("fail", "timeout")]
    return 1 if bad and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
