"""A venv under /tmp (CI runners, throwaway checkouts): /tmp is each session's own tmpfs, so
the view stages such paths and binds them into every session's /tmp; the zygote, which
imports the preloads inside the view before any session exists, must see them too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
from aster.sandbox import SandboxConfig, SandboxPool
cfg = SandboxConfig(spare_workers=0, preload=["aster_tmp_probe"])
with SandboxPool(cfg) as pool, pool.session() as s:
    print(pool.protections["filesystem"].in_force)
    print(s.run("import aster_tmp_probe, sys\\naster_tmp_probe.VALUE, sys.prefix").output)
"""


def _root_with_mounts() -> bool:
    if os.geteuid() != 0:
        return False
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff"))
    return bool(eff & (1 << 21))


@pytest.mark.skipif(not _root_with_mounts(), reason="the view needs root with CAP_SYS_ADMIN")
def test_preloads_from_a_venv_under_tmp():
    venv = Path("/tmp") / f"aster-venv-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=120)
        site = Path(subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
             "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
        (site / "aster_tmp_probe.py").write_text("VALUE = 42\n")
        # this environment's packages and aster's source, as a second venv would install them
        (site / "outer.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{REPO}\n")
        out = subprocess.run([str(venv / "bin" / "python"), "-c", SCRIPT], capture_output=True,
                             text=True, timeout=180, cwd="/")
        assert out.returncode == 0, out.stderr[-3000:]
        in_force, value = out.stdout.splitlines()[:2]
        assert in_force == "True"
        assert value == f"(42, '{venv}')", out.stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)
