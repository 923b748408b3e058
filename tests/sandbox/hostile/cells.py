"""What the hostile-cell tests (tests/sandbox/hostile/) share: the syscall table, the test
pool's config, the host side's keyring and SysV helpers, and running a cell bounded in time and
output."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import secrets
import textwrap
import time

import pytest

from aster.sandbox import SandboxConfig, SandboxPool

MEMORY_MB, DISK_MB = 256, 32
NR = {  # the syscalls the cells and the host side call by number (asm/unistd_64.h, generic)
    "x86_64": {"keyctl": 250, "add_key": 248, "request_key": 249, "unshare": 272, "clone": 56,
               "setns": 308, "bpf": 321, "perf_event_open": 298, "io_uring_setup": 425,
               "io_uring_register": 427, "ptrace": 101, "process_vm_readv": 310},
    "aarch64": {"keyctl": 219, "add_key": 217, "request_key": 218, "unshare": 97, "clone": 220,
                "setns": 268, "bpf": 280, "perf_event_open": 241, "io_uring_setup": 425,
                "io_uring_register": 427, "ptrace": 117, "process_vm_readv": 270},
}.get(os.uname().machine)
TAG = secrets.token_hex(4)  # keys and names of this run: the box is shared
HOST_SHM_KEY = 0x41000000 | secrets.randbits(24)
HOST_SECRET = f"host-segment-secret-{TAG}"
KEY_DESC = f"aster-hostile-{TAG}"
KEY_SPEC_SESSION = -3
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.shmat.restype = ctypes.c_void_p
LIBC.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]

PRELUDE = f"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
NR = {NR!r}
def sys_(name, *args):
    rc = libc.syscall(NR[name], *args)
    return 'ok' if rc >= 0 else errno.errorcode[ctypes.get_errno()]
"""


def _config(**over) -> SandboxConfig:
    """The test pool's limits; keys the code under test lacks are left out (see the doc)."""
    known = {f.name for f in dataclasses.fields(SandboxConfig)}
    cfg = dict(preload=["math"], memory_mb=MEMORY_MB, disk_mb=DISK_MB, tmp_mb=16,
               max_sessions=4, spare_workers=1, max_processes=8, timeout_s=10.0, grace_s=0.3,
               max_output_chars=4000)
    cfg.update(over)
    return SandboxConfig(**{k: v for k, v in cfg.items() if k in known})


# ----------------------------------------------------------------------------- host side


def _keyctl(*args) -> int:
    return LIBC.syscall(NR["keyctl"], *args)


def _host_key_present(desc: str) -> bool:
    """Whether our session keyring holds a user key `desc` (KEYCTL_SEARCH = 10)."""
    return _keyctl(10, KEY_SPEC_SESSION, b"user", desc.encode(), 0) >= 0


def _add_host_key(desc: str) -> None:
    payload = b"trainer-keyring-secret"
    if LIBC.syscall(NR["add_key"], b"user", desc.encode(), payload, len(payload),
                    KEY_SPEC_SESSION) < 0:
        raise OSError(ctypes.get_errno(), "add_key")


def _sysvipc_keys(kind: str) -> set[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        return {int(line.split()[0]) for line in list(f)[1:] if line.split()}


def _sysvipc_ids(kind: str, key: int) -> list[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        rows = [line.split() for line in list(f)[1:]]
    return [int(r[1]) for r in rows if r and int(r[0]) == key]


def _remove_host_ipc(kind: str, key: int) -> None:
    """Clean up what an unconfined cell left in the host's IPC namespace."""
    ctl = {"shm": LIBC.shmctl, "msg": LIBC.msgctl, "sem": LIBC.semctl}[kind]
    for ident in _sysvipc_ids(kind, key):
        ctl(ident, 0, 0, 0) if kind == "sem" else ctl(ident, 0, None)  # IPC_RMID = 0


def _requires(pool: SandboxPool, name: str) -> None:
    """Skip (after checking the report) where the protection is NOT in force here."""
    found = pool.protections.get(name)
    if found is None or found.in_force:
        return
    line = next(x for x in pool.enforcement if x.startswith(f"{name}:"))
    assert "NOT in force" in line and len(line) > len(name) + 20, line
    pytest.skip(line)


def _run(session, code: str, timeout: float = 10.0):
    start = time.monotonic()
    r = session.run(PRELUDE + textwrap.dedent(code), timeout=timeout)
    assert time.monotonic() - start < timeout + 3.0
    assert len(r.output) <= 4000 + 300
    return r


def _serves_all_slots(pool: SandboxPool) -> None:
    opened = [pool.open_session() for _ in range(pool.config.max_sessions)]
    try:
        assert [s.run("6 * 7", timeout=10).output for s in opened] == ["42\n"] * len(opened)
    finally:
        for s in opened:
            s.close()


def _errnos(r) -> list[str]:
    return re.findall(r"RESULT (\w+)", r.output)
