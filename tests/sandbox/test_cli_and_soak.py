"""`aster sandbox run` end to end, and the soak test (slow)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from aster.sandbox import SandboxConfig, SandboxPool


def test_sandbox_run_file(tmp_path):
    cell = tmp_path / "cell.py"
    cell.write_text("x = 6\nprint(x * 7)\nx\n")
    out = subprocess.run([sys.executable, "-m", "aster.cli", "sandbox", "run", str(cell)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "42\n6\n", out.stderr


def test_sandbox_run_bad_override_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "aster.cli", "sandbox", "run",
                          "sandbox.timeout_s=0"], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "sandbox.timeout_s=" in out.stderr


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
def test_soak_thousands_of_sessions():
    fds = len(os.listdir("/proc/self/fd"))
    with SandboxPool(SandboxConfig(spare_workers=2, max_sessions=8)) as pool:
        for _ in range(100):  # warm-up: allocator and thread pools reach their steady size
            with pool.session() as s:
                s.run("y = 1")
        rss = _rss_mb()
        for i in range(3000):
            with pool.session() as s:
                assert s.run(f"v = {i}").ok
                assert s.run("v * 2").output == f"{2 * i}\n"
                if i % 500 == 0:
                    assert s.run("while True: pass", timeout=0.2).status == "timeout"
        assert _rss_mb() - rss < 50
        zygote = psutil.Process(pool._zygote.proc.pid)
        workers = [p for p in zygote.children(recursive=True)
                   if p.status() != psutil.STATUS_ZOMBIE]
        with pool._lock:  # what is left: the spares (worker, pid-namespace init), one may be
            spares = list(pool._spares) + list(pool._starting)  # still starting
        assert len(spares) <= pool.config.spare_workers
        assert {p.pid for p in workers} <= {pid for w in spares for pid in w.pids()}
        assert len(os.listdir(pool._root)) <= pool.config.spare_workers
    assert psutil.Process().children(recursive=True) == []
    assert len(os.listdir("/proc/self/fd")) <= fds
