"""Sandbox benchmark: latency, session open, throughput, memory, timeout delay vs a baseline.

The baseline mimics the published reproduction: every call is a fresh `python` that imports
sympy, loads the session state from a dill pickle, runs the cell and pickles the state again.
``run(backend, quick)`` returns {"section": "sandbox", "rows": [...], "notes": [...]}; the
sandbox runs on the CPU whatever the backend is.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from aster.sandbox import SandboxConfig, SandboxPool

CALL = "x = x + 1"

BASELINE = """
import sys, sympy, dill
path = sys.argv[1]
try:
    with open(path, "rb") as f:
        ns = dill.load(f)
except FileNotFoundError:
    ns = {}
exec(sys.argv[2], ns)
ns.pop("__builtins__", None)
with open(path, "wb") as f:
    dill.dump(ns, f)
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _row(metric: str, value: float, unit: str, target: str = "", ok: bool | None = None) -> dict:
    return {"metric": metric, "value": round(value, 3), "unit": unit, "target": target,
            "ok": ok}


def _call_latency(pool: SandboxPool, n: int) -> list[float]:
    with pool.session() as s:
        s.run("x = 0")
        for _ in range(20):
            s.run(CALL)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            s.run(CALL)
            times.append(time.perf_counter() - t)
    return times


def _open_times(pool: SandboxPool, n: int) -> list[float]:
    times = []
    for _ in range(n):
        time.sleep(0.02)  # let the spares refill, as between trajectory ends in a rollout
        t = time.perf_counter()
        s = pool.open_session()
        times.append(time.perf_counter() - t)
        s.close()
    return times


def _throughput(pool: SandboxPool, sessions: int, calls: int) -> float:
    opened = [pool.open_session() for _ in range(sessions)]
    for s in opened:
        s.run("x = 0")

    def work(s):
        for _ in range(calls):
            s.run(CALL)

    threads = [threading.Thread(target=work, args=(s,)) for s in opened]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    for s in opened:
        s.close()
    return sessions * calls / wall


def _uss_mb(pid: int) -> float:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024


def _idle_uss(pool: SandboxPool, sessions: int) -> float:
    """Mean private memory of an idle session: all its processes (the worker and, as root,
    its pid namespace's init)."""
    opened = [pool.open_session() for _ in range(sessions)]
    for s in opened:
        s.run("x = 1")
    time.sleep(0.2)
    uss = [sum(_uss_mb(pid) for pid in s._worker.pids()) for s in opened]
    for s in opened:
        s.close()
    return statistics.mean(uss)


def _timeout_delays(pool: SandboxPool, deadline: float) -> tuple[float, float]:
    with pool.session() as s:
        soft = s.run("while True:\n    pass", timeout=deadline).duration_s - deadline
        hard = s.run("import collections, itertools\n"
                     "collections.deque(itertools.count(), maxlen=0)",
                     timeout=deadline).duration_s - deadline
    return soft, hard


def _baseline(n: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.pkl")
        subprocess.run([sys.executable, "-c", BASELINE, state, "x = 0"], check=True)
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", BASELINE, state, CALL], check=True)
            times.append(time.perf_counter() - t)
    return times


def run(backend=None, quick: bool = True, config: SandboxConfig | None = None) -> dict:
    """Measure the sandbox and the baseline in the same run; `backend` is not used."""
    n_calls, n_open, n_base = (300, 30, 3) if quick else (3000, 200, 10)
    cfg = config if config is not None else SandboxConfig()
    rows, notes = [], []
    t = time.perf_counter()
    with SandboxPool(cfg) as pool:
        notes += pool.enforcement
        with pool.session() as s:
            s.run("1")
        notes.append(f"zygote start + first session: {time.perf_counter() - t:.2f} s")
        lat = _call_latency(pool, n_calls)
        p50, p99 = _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3
        rows.append(_row("trivial call p50", p50, "ms", "<= 1", p50 <= 1))
        rows.append(_row("trivial call p99", p99, "ms", "<= 20", p99 <= 20))
        opens = _open_times(pool, n_open)
        o50 = _pct(opens, 0.5) * 1e3
        rows.append(_row("session open p50 (with spares)", o50, "ms", "<= 1", o50 <= 1))
        rows.append(_row("session open p99", _pct(opens, 0.99) * 1e3, "ms"))
        for n in (4, 16):
            calls = 50 if quick else 300
            rows.append(_row(f"calls/s, {n} concurrent sessions", _throughput(pool, n, calls),
                             "calls/s"))
        uss = _idle_uss(pool, 8)
        rows.append(_row("private memory per idle session (USS)", uss, "MB", "<= 15", uss <= 15))
        soft, hard = _timeout_delays(pool, 1.0)
        rows.append(_row("timeout report delay (SIGINT stops it)", soft, "s", "<= 1", soft <= 1))
        rows.append(_row("timeout report delay (needs SIGKILL)", hard, "s", "<= 1", hard <= 1))
    base = _baseline(n_base)
    b50 = _pct(base, 0.5) * 1e3
    rows.append(_row("baseline call p50 (fresh python + sympy + dill)", b50, "ms"))
    speedup = b50 / max(p50, 1e-6)
    rows.append(_row("speed-up per call vs baseline", speedup, "x", ">= 100", speedup >= 100))
    notes.append(f"{os.cpu_count()} CPU cores; quick={quick}; calls: {n_calls}, opens: {n_open}, "
                 f"baseline calls: {n_base}")
    return {"section": "sandbox", "rows": rows, "notes": notes}


def format_table(result: dict) -> str:
    """The rows as a fixed-width table, then the notes."""
    lines = [f"{'metric':<50} {'value':>12} {'unit':<8} {'target':<8} ok"]
    for r in result["rows"]:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['metric']:<50} {r['value']:>12.3f} {r['unit']:<8} {r['target']:<8} {ok}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def format_pair(before: dict, after: dict, label: str) -> str:
    """Two runs of the same rows side by side (before: another checkout's aster)."""
    lines = [f"{'metric':<50} {'before':>10} {'after':>10} {'unit':<8} {'target':<8} ok",
             f"(before: {label})"]
    old = {r["metric"]: r["value"] for r in before["rows"]}
    for r in after["rows"]:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        prev = old.get(r["metric"])
        prev = f"{prev:>10.3f}" if prev is not None else f"{'-':>10}"
        lines.append(f"{r['metric']:<50} {prev} {r['value']:>10.3f} {r['unit']:<8} "
                     f"{r['target']:<8} {ok}")
    lines += [f"note: {n}" for n in after["notes"]]
    return "\n".join(lines)


def _before(checkout: str, full: bool) -> dict:
    """This file's measurements with `checkout`'s aster (e.g. main), in a fresh process."""
    import json

    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    cmd = [sys.executable, os.path.abspath(__file__), "--json"] + (["--full"] if full else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    import json

    full = "--full" in sys.argv
    if "--json" in sys.argv:
        print(json.dumps(run(None, quick=not full)))
    elif "--before" in sys.argv:  # python bench/bench_sandbox.py --before /path/to/main
        other = sys.argv[sys.argv.index("--before") + 1]
        previous = _before(other, full)
        print(format_pair(previous, run(None, quick=not full), other))
    else:
        print(format_table(run(None, quick=not full)))
