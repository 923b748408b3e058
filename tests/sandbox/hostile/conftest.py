"""The hostile cells' fixtures: a trainer with secrets on the host, one pool per test module
(over the sandbox conftest's `pool`: the limits in cells._config), two fresh pools."""

from __future__ import annotations

import ctypes
import os

import pytest

from aster.sandbox import SandboxPool
from tests.sandbox.hostile.cells import (
    HOST_SECRET,
    HOST_SHM_KEY,
    KEY_DESC,
    LIBC,
    TAG,
    _add_host_key,
    _config,
    _keyctl,
)


@pytest.fixture(scope="module")
def trainer_secrets():
    """A trainer with a key in its session keyring and a world-readable SysV segment (a
    careless program on the host): both must stay out of every session's reach."""
    if _keyctl(1, f"aster-hostile-trainer-{TAG}".encode()) < 0:  # JOIN_SESSION_KEYRING
        pytest.skip(f"no keyrings here ({os.strerror(ctypes.get_errno())})")
    _add_host_key(KEY_DESC)
    shmid = LIBC.shmget(HOST_SHM_KEY, 4096, 0o1000 | 0o666)  # IPC_CREAT
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    addr = LIBC.shmat(shmid, None, 0)
    ctypes.memmove(addr, HOST_SECRET.encode(), len(HOST_SECRET))
    LIBC.shmdt(ctypes.c_void_p(addr))
    yield
    LIBC.shmctl(shmid, 0, None)


@pytest.fixture(scope="module")
def pool(trainer_secrets):
    p = SandboxPool(_config())
    yield p
    p.close()


@pytest.fixture()
def two_pools(trainer_secrets):
    """Two fresh pools in one process, as two ranks' (or two runs') would be on one machine:
    each starts numbering its sessions at the same moment of its life."""
    with SandboxPool(_config()) as first, SandboxPool(_config()) as second:
        yield first, second
