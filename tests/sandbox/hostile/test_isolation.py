"""Hostile cells against the per-session confinement (issue 25), isolation: the host's and
other sessions' SysV / POSIX IPC, the trainer's keyring, abstract unix sockets between
sessions, and uids shared between pools (in one process or two). See test_resources.py for
what every cell is held to.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import textwrap

import pytest

from aster.sandbox import SandboxPool
from tests.sandbox.hostile.cells import (
    HOST_SECRET,
    HOST_SHM_KEY,
    KEY_DESC,
    KEY_SPEC_SESSION,
    LIBC,
    NR,
    TAG,
    _add_host_key,
    _config,
    _errnos,
    _host_key_present,
    _remove_host_ipc,
    _requires,
    _run,
    _serves_all_slots,
    _sysvipc_keys,
)

pytestmark = pytest.mark.skipif(NR is None, reason="no syscall table for this arch")


# ----------------------------------------------------------------------------- SysV / POSIX IPC


def test_host_shm_segments_are_not_listed(pool):
    _requires(pool, "ipc")
    with pool.session() as s:
        r = _run(s, "print(open('/proc/sysvipc/shm').read())")
        assert str(HOST_SHM_KEY) not in r.output, r.output[-400:]
    _serves_all_slots(pool)


def test_host_shm_segment_cannot_be_read(pool):
    _requires(pool, "ipc")
    with pool.session() as s:
        r = _run(s, f"""
            libc.shmat.restype = ctypes.c_void_p
            shmid = libc.shmget({HOST_SHM_KEY}, 0, 0)
            if shmid < 0:
                print('RESULT', errno.errorcode[ctypes.get_errno()])
            else:
                addr = libc.shmat(shmid, None, 0)
                print('RESULT read', ctypes.string_at(addr, 64))
            """)
        assert HOST_SECRET not in r.output and _errnos(r) == ["ENOENT"], r.output[-400:]
    _serves_all_slots(pool)


def test_detached_shm_segment_does_not_outlive_its_session(pool):
    _requires(pool, "ipc")
    key = 0x42000000 | secrets.randbits(24)
    try:
        with pool.session() as s:
            r = _run(s, f"""
                libc.shmat.restype = ctypes.c_void_p
                shmid = libc.shmget({key}, 1 << 20, 0o1000 | 0o600)
                addr = libc.shmat(shmid, None, 0)
                ctypes.memset(addr, 7, 1 << 20)
                libc.shmdt(ctypes.c_void_p(addr))
                print('RESULT', 'made' if shmid >= 0 else errno.errorcode[ctypes.get_errno()])
                """)
            assert _errnos(r) == ["made"], r.output
        assert key not in _sysvipc_keys("shm")
    finally:
        _remove_host_ipc("shm", key)
    _serves_all_slots(pool)


MSG = """
class Msg(ctypes.Structure):
    _fields_ = [('mtype', ctypes.c_long), ('mtext', ctypes.c_char * 64)]
"""


def test_message_queue_does_not_pass_between_sessions(pool):
    _requires(pool, "ipc")
    key = 0x43000000 | secrets.randbits(24)
    try:
        with pool.session() as a:
            r = _run(a, MSG + textwrap.dedent(f"""
                q = libc.msgget({key}, 0o1000 | 0o666)
                m = Msg(1, b'from session a')
                print('RESULT', 'sent' if libc.msgsnd(q, ctypes.byref(m), 64, 0) == 0 else 'no')
                """))
            assert _errnos(r) == ["sent"], r.output
        with pool.session() as b:
            r = _run(b, MSG + textwrap.dedent(f"""
                q = libc.msgget({key}, 0)
                m = Msg()
                if q < 0:
                    print('RESULT', errno.errorcode[ctypes.get_errno()])
                else:
                    print('RESULT got', libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000), m.mtext)
                """))
            assert "from session a" not in r.output and _errnos(r) == ["ENOENT"], r.output
    finally:
        _remove_host_ipc("msg", key)
    _serves_all_slots(pool)


def test_semaphore_set_is_not_shared_between_live_sessions(pool):
    _requires(pool, "ipc")
    key = 0x44000000 | secrets.randbits(24)
    try:
        with pool.session() as a, pool.session() as b:
            r = _run(a, f"print('RESULT', 'made' if libc.semget({key}, 1, 0o1000 | 0o666) >= 0 "
                        "else 'no')")
            assert _errnos(r) == ["made"], r.output
            r = _run(b, f"s = libc.semget({key}, 1, 0)\n"
                        "print('RESULT', 'joined' if s >= 0 else errno.errorcode[ctypes.get_errno()])")
            assert _errnos(r) == ["ENOENT"], r.output
    finally:
        _remove_host_ipc("sem", key)
    _serves_all_slots(pool)


def test_posix_message_queue_is_not_shared_between_live_sessions(pool):
    _requires(pool, "ipc")
    name = f"/aster-hostile-{TAG}".encode()
    try:
        with pool.session() as a, pool.session() as b:
            r = _run(a, f"q = libc.mq_open({name!r}, os.O_CREAT | os.O_RDWR, 0o666, None)\n"
                        "print('RESULT', 'made' if q >= 0 else errno.errorcode[ctypes.get_errno()])\n"
                        "libc.mq_send(q, b'from a', 6, 0)")
            assert _errnos(r) == ["made"], r.output
            r = _run(b, f"q = libc.mq_open({name!r}, os.O_RDWR)\n"
                        "print('RESULT', 'opened' if q >= 0 else errno.errorcode[ctypes.get_errno()])")
            assert _errnos(r) == ["ENOENT"], r.output
    finally:
        LIBC.mq_unlink(name)
    _serves_all_slots(pool)


@pytest.mark.parametrize("kind,protection", [("ipc", "ipc"), ("net", "network")])
def test_each_session_has_its_own_namespace(pool, kind, protection):
    _requires(pool, protection)
    with pool.session() as a, pool.session() as b:
        code = f"print('NS', os.readlink('/proc/self/ns/{kind}'))"
        seen = {re.search(r"NS (\S+)", _run(x, code).output).group(1) for x in (a, b)}
    assert len(seen) == 2 and os.readlink(f"/proc/self/ns/{kind}") not in seen
    _serves_all_slots(pool)


# ----------------------------------------------------------------------------- keyrings


@pytest.fixture()
def trainer_key(trainer_secrets):
    """The trainer's key is there before each keyring cell (an unconfined cell may clear it)."""
    if not _host_key_present(KEY_DESC):
        _add_host_key(KEY_DESC)
    yield KEY_DESC


def test_trainer_keyring_is_not_listed(pool, trainer_key):
    _requires(pool, "keyring")
    with pool.session() as s:
        r = _run(s, "print(open('/proc/keys').read())")
        assert trainer_key not in r.output, r.output[-400:]
    _serves_all_slots(pool)


def test_trainer_key_cannot_be_requested(pool, trainer_key):
    _requires(pool, "keyring")
    with pool.session() as s:
        r = _run(s, f"print('RESULT', sys_('request_key', b'user', {trainer_key.encode()!r}, "
                    "None, 0))")
        assert _errnos(r) in (["EPERM"], ["ENOKEY"]), r.output
    _serves_all_slots(pool)


def test_no_key_can_be_added_to_the_trainers_keyring(pool, trainer_key):
    _requires(pool, "keyring")
    added = f"aster-hostile-added-{TAG}"
    with pool.session() as s:
        r = _run(s, f"print('RESULT', sys_('add_key', b'user', {added.encode()!r}, b'x', 1, "
                    f"{KEY_SPEC_SESSION}))")
        assert _errnos(r) == ["EPERM"], r.output
    assert not _host_key_present(added)
    _serves_all_slots(pool)


def test_trainer_keyring_cannot_be_cleared(pool, trainer_key):
    _requires(pool, "keyring")
    with pool.session() as s:
        r = _run(s, f"print('RESULT', sys_('keyctl', 7, {KEY_SPEC_SESSION}))")  # KEYCTL_CLEAR
        assert _errnos(r) == ["EPERM"], r.output
    assert _host_key_present(trainer_key)
    _serves_all_slots(pool)


# ----------------------------------------------------------------------------- between sessions


LISTEN = f"""
import socket
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind('\\0aster-hostile-{TAG}')
srv.listen(1)
srv.settimeout(2)
print('RESULT listening')
"""
CONNECT = f"""
import socket
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    c.connect('\\0aster-hostile-{TAG}')
    {{then}}
    print('RESULT connected')
except OSError as exc:
    print('RESULT', errno.errorcode[exc.errno])
"""


@pytest.mark.parametrize("then", ["c.sendall(b'answer: 42')",
                                  "socket.send_fds(c, [b'fd'], [os.open('/sandbox', 0)])"],
                         ids=["data", "file_descriptor"])
def test_abstract_unix_socket_does_not_join_sessions(pool, then):
    _requires(pool, "network")
    with pool.session() as a, pool.session() as b:
        assert _errnos(_run(a, LISTEN)) == ["listening"]
        r = _run(b, CONNECT.format(then=then))
        assert _errnos(r) == ["ECONNREFUSED"], r.output
        r = _run(a, "try:\n    conn, _ = srv.accept()\n    print('RESULT accepted')\n"
                    "except OSError:\n    print('RESULT none')")
        assert _errnos(r) == ["none"], r.output
    _serves_all_slots(pool)


# ----------------------------------------------------------------------------- uids across pools


def _uid(session) -> int:
    return int(session.run("import os\nos.getuid()").output)


def test_two_pools_on_one_machine_never_share_a_uid(two_pools):
    pool, other_pool = two_pools
    _requires(pool, "uid")
    opened = [p.open_session() for p in (pool, other_pool) for _ in range(2)]
    try:
        uids = [_uid(s) for s in opened]
        assert len(set(uids)) == len(uids), uids
    finally:
        for s in opened:
            s.close()
    _serves_all_slots(pool)
    _serves_all_slots(other_pool)


def test_rlimit_nproc_of_one_pool_does_not_stop_another_pools_forks(two_pools):
    """RLIMIT_NPROC counts per uid: a session at its process limit must not stop a session of
    another pool (another rank) from forking, as it did when every pool numbered uids alike."""
    pool, other_pool = two_pools
    _requires(pool, "uid")
    n = pool.config.max_processes
    with pool.session() as a, other_pool.session() as b:
        r = _run(a, f"""
            import time
            kids = []
            for _ in range({n - 1}):
                pid = os.fork()
                if pid == 0:
                    time.sleep(20); os._exit(0)
                kids.append(pid)
            print('RESULT forked', len(kids))
            """)
        assert f"forked {n - 1}" in r.output, r.output
        r = _run(b, "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
                    "print('RESULT forked')")
        assert _errnos(r) == ["forked"], r.output
    _serves_all_slots(pool)


HOLDER = """
import sys
from aster.sandbox import SandboxConfig, SandboxPool
with SandboxPool(SandboxConfig(preload=['math'], max_sessions=4, spare_workers=0)) as p:
    opened = [p.open_session() for _ in range(4)]
    print(' '.join(s.run('import os\\nos.getuid()').output.strip() for s in opened), flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_pools_in_two_processes_never_share_a_uid(trainer_secrets):
    """Two ranks: each process starts its own pool at the same moment of its life."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        theirs = {int(u) for u in holder.stdout.readline().split()}
        with SandboxPool(_config(spare_workers=0)) as mine:
            _requires(mine, "uid")
            opened = [mine.open_session() for _ in range(4)]
            ours = {_uid(s) for s in opened}
            for s in opened:
                s.close()
        assert len(theirs) == 4 and ours.isdisjoint(theirs), (ours, theirs)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
