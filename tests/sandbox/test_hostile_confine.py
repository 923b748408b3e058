"""Hostile cells against the per-session confinement (issue 25): memory, disk, IPC, keyrings,
sessions and pools sharing a namespace or a uid, and the kernel's syscall surface.

Each cell is an attack a policy under RL could write, run through the public API only; each
is bounded in time and size, must be contained, and after each the pool still serves all its
slots. A cell whose protection the pool reports NOT in force (not root, no cgroup v2
delegation) is skipped with that report, after checking it is worded so; a pool that does not
report the protection at all (the code before this change) is held to it, so the same file run
against that code shows which cells it fails.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import re
import secrets
import subprocess
import sys
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
pytestmark = pytest.mark.skipif(NR is None, reason="no syscall table for this arch")
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


# ----------------------------------------------------------------------------- memory


MEMFD = """
fds, n = [], 0
try:   # memfds of 32 MB, each under RLIMIT_FSIZE and none of them address space
    while n < 512:
        if n % 32 == 0:
            fds.append(os.memfd_create('hoard'))
        os.write(fds[-1], b'\\1' * (1 << 20)); n += 1
finally:
    print('held MB', n)
"""

CHILDREN = """
import select, time
r, w = os.pipe()
kids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        try:
            {hold}
            os.write(w, b'k'); time.sleep(30)
        finally:
            os._exit(0)
    kids.append(pid)
got = b''
while len(got) < 3 and select.select([r], [], [], 1.5)[0]:
    got += os.read(r, 8)
time.sleep(0.3)  # an OOM kill may take one that had already said it holds its share
alive = sum(1 for k in kids if os.waitpid(k, os.WNOHANG) == (0, 0))
print('children holding', min(len(got), alive))
for k in kids:
    try:
        os.kill(k, 9)
    except OSError:
        pass
"""
ANON_HOLD = "b = bytearray(120 << 20)\n            for j in range(0, len(b), 4096): b[j] = 1"
MEMFD_HOLD = ("fds = [os.memfd_create('x') for _ in range(4)]\n            for j in range(120): "
              "os.write(fds[j // 30], b'\\1' * (1 << 20))")

SHM_HOARD = """
libc.shmat.restype = ctypes.c_void_p
ids, n = [], 0
try:   # two detached segments of 150 MB: each fits RLIMIT_AS while attached, not both
    for _ in range(2):
        shmid = libc.shmget(0, 150 << 20, 0o1000 | 0o600)   # IPC_PRIVATE, IPC_CREAT
        ids.append(shmid)
        addr = libc.shmat(shmid, None, 0)
        for mb in range(150):
            ctypes.memset(addr + (mb << 20), 1, 1 << 20); n += 1
        libc.shmdt(ctypes.c_void_p(addr))
    print('held MB', n)
finally:   # where the segments are the host's (no IPC namespace) they must not stay there
    for shmid in ids:
        libc.shmctl(shmid, 0, None)
"""


def _memory_held(r) -> int:
    found = re.findall(r"(?:held MB|children holding) (\d+)", r.output)
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("name,code,most", [
    ("memfd_beyond_memory_mb", MEMFD, MEMORY_MB - 1),
    ("forked_children_beyond_memory_mb", CHILDREN.format(hold=ANON_HOLD), 2),
    ("memfds_in_children_beyond_memory_mb", CHILDREN.format(hold=MEMFD_HOLD), 2),
    ("sysv_shm_beyond_memory_mb", SHM_HOARD, MEMORY_MB - 1),
])
def test_session_memory_is_bounded_as_a_whole(pool, name, code, most):
    """memfds are not address space and forked children each get their own RLIMIT_AS: only a
    memory cgroup bounds the session. The cell fails, is killed, or holds less."""
    _requires(pool, "memory_limit")
    with pool.session() as s:
        r = _run(s, code, timeout=10.0)
        assert _memory_held(r) <= most, (r.status, r.output[-400:])
        assert s.run("1 + 1").output == "2\n"
    _serves_all_slots(pool)


# ----------------------------------------------------------------------------- disk


DISK_FILL = """
n = 0
try:
    for i in range(12):
        with open(f'/sandbox/fill{i}', 'wb') as f:
            for _ in range(8):
                f.write(b'0' * (1 << 20)); f.flush(); n += 1
finally:
    print('wrote MB', n)
"""
INODE_FILL = """
n = 0
try:
    for i in range(5000):
        {make}; n += 1
finally:
    print('made', n)
"""


def test_disk_fill_of_sandbox_stops_at_disk_mb(pool):
    _requires(pool, "disk")
    with pool.session() as s:
        r = _run(s, DISK_FILL)
        wrote = int(re.search(r"wrote MB (\d+)", r.output).group(1))
        assert r.status == "error" and "No space left" in r.output, r.output[-400:]
        assert wrote <= DISK_MB
    _serves_all_slots(pool)


@pytest.mark.parametrize("make", ["open(f'/sandbox/f{i}', 'w').close()",
                                  "os.mkdir(f'/sandbox/d{i}')"], ids=["files", "dirs"])
def test_inode_fill_of_sandbox_stops_at_its_inode_limit(pool, make):
    _requires(pool, "disk")
    with pool.session() as s:
        r = _run(s, INODE_FILL.format(make=make))
        made = int(re.search(r"made (\d+)", r.output).group(1))
        assert r.status == "error" and "No space left" in r.output, r.output[-400:]
        assert made < 5000
    _serves_all_slots(pool)


def test_sandbox_files_are_not_on_the_hosts_disk(pool):
    _requires(pool, "disk")
    with pool.session() as s:
        r = _run(s, "open('/sandbox/marker', 'w').write('x' * 4096)\nprint(os.listdir('.'))")
        assert "marker" in r.output
        host_dir = s._worker.workdir
        assert not os.path.isdir(host_dir) or os.listdir(host_dir) == []
    _serves_all_slots(pool)


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


# ----------------------------------------------------------------------------- kernel surface


KERNEL_CELLS = {
    "unshare_newuser": "print('RESULT', sys_('unshare', 0x10000000))",
    "unshare_newuser_gives_no_capabilities": """
        sys_('unshare', 0x10000000 | 0x00020000)
        caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]
        print('RESULT', 'EPERM' if int(caps, 16) == 0 else 'caps_' + caps)
        """,
    "clone_newuser": """
        pid = libc.syscall(NR['clone'], 0x10000000 | 17, 0, 0, 0, 0)   # CLONE_NEWUSER|SIGCHLD
        if pid == 0:
            os._exit(0)
        print('RESULT', errno.errorcode[ctypes.get_errno()] if pid < 0 else 'cloned')
        if pid > 0:
            os.waitpid(pid, 0)
        """,
    "io_uring_setup": """
        params = ctypes.create_string_buffer(120)
        print('RESULT', sys_('io_uring_setup', 8, params))
        """,
    "io_uring_register": "print('RESULT', sys_('io_uring_register', -1, 0, None, 0))",
    "bpf_prog_load": """
        insns = (ctypes.c_uint64 * 2)(0xb7, 0x95)   # r0 = 0; exit
        attr = ctypes.create_string_buffer(128)
        ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 2), 8)    # SOCKET_FILTER, 2 insns
        ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(
            ctypes.addressof(insns))), 8)
        lic = ctypes.create_string_buffer(b'GPL')
        ctypes.memmove(ctypes.addressof(attr) + 16, ctypes.byref(ctypes.c_uint64(
            ctypes.addressof(lic))), 8)
        print('RESULT', sys_('bpf', 5, attr, 128))
        """,
    "bpf_any_command": "print('RESULT', sys_('bpf', 9999, None, 0))",
    "perf_event_open": """
        attr = ctypes.create_string_buffer(128)
        ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 128), 8)   # SOFTWARE, size
        ctypes.memmove(ctypes.addressof(attr) + 40, ctypes.byref(ctypes.c_uint64(1 << 5)), 8)
        print('RESULT', sys_('perf_event_open', attr, 0, -1, -1, 0))   # exclude_kernel
        """,
    "keyctl_session_keyring_id": "print('RESULT', sys_('keyctl', 0, -3, 0))",
    "ptrace_attach_own_child": """
        import time
        pid = os.fork()
        if pid == 0:
            time.sleep(5); os._exit(0)
        print('RESULT', sys_('ptrace', 16, pid, 0, 0))   # PTRACE_ATTACH
        os.kill(pid, 9); os.waitpid(pid, 0)
        """,
    "ptrace_traceme": "print('RESULT', sys_('ptrace', 0, 0, 0, 0))",
    "process_vm_readv_self": """
        class IoVec(ctypes.Structure):
            _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
        src, dst = ctypes.create_string_buffer(b'x' * 16), ctypes.create_string_buffer(16)
        local = IoVec(ctypes.addressof(dst), 16)
        remote = IoVec(ctypes.addressof(src), 16)
        print('RESULT', sys_('process_vm_readv', os.getpid(), ctypes.byref(local), 1,
                             ctypes.byref(remote), 1, 0))
        """,
    "setns_any": "print('RESULT', sys_('setns', -1, 0))",
}


@pytest.mark.parametrize("name", sorted(KERNEL_CELLS))
def test_kernel_surface_is_refused(pool, name):
    _requires(pool, "seccomp")
    with pool.session() as s:
        r = _run(s, KERNEL_CELLS[name])
        assert r.status == "ok" and _errnos(r) == ["EPERM"], r.output[-400:]
        assert s.run("1 + 1").output == "2\n"
    _serves_all_slots(pool)


OTHER_ABI = {
    # unshare(CLONE_NEWUSER) as an i386 syscall (int 0x80: eax = 310): mov eax; mov ebx; int
    # 0x80; ret, run from an executable page; the kernel answers -errno in eax
    "i386_int80_unshare_newuser": """
        import mmap
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(bytes.fromhex('b836010000' 'bb00000010' 'cd80' 'c3'))
        call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        rc = call()
        print('RESULT', errno.errorcode.get(-rc, 'ok') if rc < 0 else 'ok')
        """,
    # the x32 ABI: the same call numbers with bit 30 set (ENOSYS where x32 is not built in)
    "x32_unshare_newuser": """
        rc = libc.syscall(0x40000000 | 272, 0x10000000)
        print('RESULT', 'ok' if rc >= 0 else errno.errorcode[ctypes.get_errno()])
        """,
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 and x32 are x86_64's")
@pytest.mark.parametrize("name", sorted(OTHER_ABI))
def test_other_syscall_abis_are_refused(pool, name):
    """The filter checks the arch first: an i386 syscall's numbers mean other calls (310 is
    unshare there, not process_vm_readv), so one slipping past would bypass the list."""
    _requires(pool, "seccomp")
    with pool.session() as s:
        r = _run(s, OTHER_ABI[name])
        assert r.status == "ok" and _errnos(r) == ["EPERM"], r.output[-400:]
    _serves_all_slots(pool)


def test_processes_and_subprocesses_still_work_under_the_filter(pool):
    """clone3 answers ENOSYS (its flags cannot be read by the filter): libc falls back."""
    with pool.session() as s:
        r = s.run("import subprocess, os\npid = os.fork()\nif pid == 0:\n    os._exit(3)\n"
                  "print(os.waitpid(pid, 0)[1] >> 8, subprocess.run(['cat', '/dev/null']).returncode)")
        assert r.output == "3 0\n", r.output


def test_seccomp_program_checks_the_arch_first():
    """Unit check of the hand-written filter: the first instructions load the arch and refuse
    any other; every jump lands inside the program."""
    from aster.sandbox import _harden

    prog = _harden.seccomp_program("x86_64")
    import struct
    ins = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert ins[0] == (0x20, 0, 0, 4) and ins[1][0] == 0x15 and ins[1][3] == 0xC000003E
    assert ins[1][1] == 0 and ins[ins[1][2] + 2] == (0x06, 0, 0, 0x00050000 | errno.EPERM)
    for at, (op, jt, jf, _) in enumerate(ins):
        if op & 0x07 == 0x05:  # BPF_JMP
            assert at + 1 + max(jt, jf) < len(ins)
    assert ins[-1][0] == 0x06 and len(_harden.seccomp_program("aarch64")) % 8 == 0
