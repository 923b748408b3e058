"""Shared sandbox fixtures: one pool per module (the zygote start is the slow part)."""

from __future__ import annotations

import os

import psutil
import pytest

from aster.sandbox import SandboxConfig, SandboxPool


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def gone(pid: int) -> bool:
    """True when the process no longer exists (or is only a zombie waiting for its reaper)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def pool():
    """A pool with tight limits; after the module, nothing of it may remain."""
    fds = _fd_count()
    # Children that exist before the pool (e.g. multiprocessing's resource tracker left by
    # another test module) are not the pool's; everything the pool started must be gone.
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    cfg = SandboxConfig(timeout_s=5.0, grace_s=0.3, memory_mb=768, max_sessions=16,
                        spare_workers=1, max_processes=32, max_file_mb=16,
                        max_output_chars=2000)
    p = SandboxPool(cfg)
    root, zygote_pid = p._root, p._zygote.proc.pid
    cgroup = p._cgroups.root if p._cgroups is not None else None
    yield p
    p.close()
    assert gone(zygote_pid)
    assert not os.path.exists(root)
    assert cgroup is None or not cgroup.exists()
    assert [c for c in psutil.Process().children(recursive=True) if c.pid not in before] == []
    assert _fd_count() <= fds


def assert_session_cleaned(worker) -> None:
    """After a session is closed: its processes, directory and cgroup are gone."""
    assert gone(worker.pid)
    assert not os.path.exists(worker.workdir)
    assert worker.group is None or not os.path.exists(worker.group)
