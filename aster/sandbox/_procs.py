"""Pool-side process handling: the zygote client, worker handles, pids cgroups, killing."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from aster.errors import ConfigError
from aster.sandbox._child import _HEADER, recv_exact, send_msg
from aster.sandbox._remove import remove_tree
from aster.sandbox.config import SandboxConfig
from aster.sandbox.result import SandboxError

CHILD_SCRIPT = str(Path(__file__).with_name("_child.py"))


def _cgroup_mount(controller: str) -> Path | None:
    """The directory of a controller's hierarchy (cgroup v1 or v2), if its groups may be made
    here: v1 mounts each controller on its own; v2 has one tree whose root must delegate it."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup" and controller in parts[3].split(","):
            return Path(parts[1])
        if parts[2] == "cgroup2":
            ctl = Path(parts[1]) / "cgroup.subtree_control"
            if ctl.exists() and controller in ctl.read_text().split():
                return Path(parts[1])
    return None


def _pids_cgroup_mount() -> Path | None:
    return _cgroup_mount("pids")


def _memory_cgroup_mount() -> Path | None:
    return _cgroup_mount("memory")


# what a session's memory group is limited by, per version: the limit, then swap off (v1's
# memsw is memory + swap, so the same number; absent without swap accounting) and, on v2, an
# OOM kill of the whole session rather than of its largest process
_MEMORY_FILES = {"v1": ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
                 "v2": ("memory.max", "memory.swap.max", "memory.oom.group")}


class CgroupTree:
    """A cgroup per worker under one root per pool and controller (pids, memory): bounds and
    finds every process of a session. On cgroup v2 both controllers share one group; on v1
    each has its own hierarchy and a worker joins a group of the same name in each."""

    def __init__(self, roots: dict[str, Path]):
        self.roots = roots  # controller -> this pool's root group in its hierarchy
        self.root = roots.get("pids", next(iter(roots.values())))
        self.dirs = list(dict.fromkeys(roots.values()))  # distinct, the primary first
        self.dirs.sort(key=lambda d: d != self.root)
        self._ids = itertools.count()
        self.memory_bytes = 0  # set by the pool: sandbox.memory_mb for the whole session

    @property
    def controllers(self) -> set[str]:
        return set(self.roots)

    @classmethod
    def create(cls, memory_bytes: int = 1 << 30) -> CgroupTree | None:
        """Fresh root groups, or None where neither controller can be used here."""
        name = f"aster-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        roots: dict[str, Path] = {}
        for controller, mount in (("pids", _pids_cgroup_mount()),
                                  ("memory", _memory_cgroup_mount())):
            if mount is None:
                continue
            root = mount / name
            try:
                root.mkdir(exist_ok=True)
            except OSError:
                continue
            if cls._delegate(root, controller, memory_bytes):
                roots[controller] = root
            elif root not in roots.values():
                cls._rmdir(root)
        if not roots:
            return None
        tree = cls(roots)
        tree.memory_bytes = memory_bytes
        return tree

    @staticmethod
    def _delegate(root: Path, controller: str, memory_bytes: int) -> bool:
        """Give the per-worker groups the controller, and prove it with a probe group.

        cgroup v2 gives a group's children a controller only when the group lists it in its
        cgroup.subtree_control (v1 gives every group every controller of its hierarchy): the
        children of a fresh v2 group have no pids.max, and writing one is EACCES."""
        control = root / "cgroup.subtree_control"
        probe = root / f"probe-{controller}"
        try:
            if control.exists():
                control.write_text(f"+{controller}")
            probe.mkdir()
            try:
                CgroupTree._limit(probe, controller, 1, memory_bytes)
            finally:
                CgroupTree._rmdir(probe)
        except OSError:
            return False
        return True

    @staticmethod
    def _limit(group: Path, controller: str, max_processes: int, memory_bytes: int) -> None:
        if controller == "pids":
            (group / "pids.max").write_text(str(max_processes))
            return
        version = "v2" if (group / "memory.max").exists() else "v1"
        limit, swap, *oom = _MEMORY_FILES[version]
        (group / limit).write_text(str(memory_bytes))
        for name, value in ((swap, "0" if version == "v2" else str(memory_bytes)),
                            *((o, "1") for o in oom)):
            if (group / name).exists():
                (group / name).write_text(value)

    @staticmethod
    def _rmdir(path: Path) -> None:
        try:
            os.rmdir(path)
        except OSError:
            pass

    def new_group(self, max_processes: int) -> str:
        """A fresh group allowing max_processes and memory_bytes; the primary one's path (the
        zygote gets its name; ``siblings`` gives the others)."""
        name = f"w{next(self._ids)}"
        for controller, root in self.roots.items():
            group = root / name
            group.mkdir(exist_ok=True)
            self._limit(group, controller, max_processes, self.memory_bytes)
        return str(self.root / name)

    def siblings(self, group: str) -> list[str]:
        """The same group in the other hierarchies (cgroup v1), emptied by killing the primary."""
        name = os.path.basename(group)
        return [str(d / name) for d in self.dirs[1:]]

    @staticmethod
    def kill_group(group: str, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the group until it is empty, then remove it."""
        procs = Path(group) / "cgroup.procs"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except (OSError, ValueError):
                return True
            if not pids:
                try:
                    os.rmdir(group)
                    return True
                except OSError:
                    pass
            for pid in pids:
                if pid <= 1:
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)
        return False

    def remove(self) -> None:
        for root in self.dirs:
            for group in list(root.glob("w*")):
                self.kill_group(str(group))
        for root in self.dirs:
            self._rmdir(root)


class Worker:
    """The pool's handle on one worker process (a session's interpreter)."""

    def __init__(self, pid: int, sock: socket.socket, workdir: str, group: str | None,
                 lifeline: int | None = None, out: int | None = None):
        self.pid = pid  # in the pool's pid namespace (the worker's own view may differ)
        self.sock = sock
        self.out = out  # the pool's own descriptor of the session's output memfd
        self.start_time: str | None = None  # the worker's, to tell a reused pid (no cgroup)
        self._init: int | None = None
        self._stopped: list[int] | None = None  # the pids the last pause stopped
        self._out_lock = threading.Lock()
        self.workdir = workdir  # on the host; the session sees it as its cwd
        self.group = group
        self.lifeline = lifeline  # closing it ends the session's pid namespace
        self.extra_groups: list[str] = []  # its groups in other cgroup v1 hierarchies
        self.uid_release = None  # frees the session's uid once its processes are dead
        self.seq = 0
        self.dead = False
        self._kill_lock = threading.Lock()

    def read_ready(self, deadline: float):
        """The worker's first message; sets ``pid`` from the kernel's SCM_CREDENTIALS, which
        translates it into our pid namespace (the worker's own getpid() may say 2). The socket
        has SO_PASSCRED on since before the fork (Zygote.fork); it is turned off here."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            return None
        creds = struct.calcsize("3i")
        head, anc, _, _ = self.sock.recvmsg(_HEADER.size, socket.CMSG_SPACE(creds))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.pid = struct.unpack("3i", data[:creds])[0]
        if not head:
            raise EOFError("worker closed its end")
        rest = self._read(deadline, _HEADER.size - len(head)) if len(head) < _HEADER.size else b""
        (size,) = _HEADER.unpack(head + (rest or b""))
        body = self._read(max(deadline, time.monotonic() + 5.0), min(size, 1 << 16))
        if body is None or len(body) != size:
            raise EOFError("ready message cut short")
        return json.loads(body)

    def pids(self) -> list[int]:
        """Every live process of the session (its cgroup), or just the worker without one."""
        if self.group is not None:
            try:
                return [int(p) for p in (Path(self.group) / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                return []
        return [self.pid] if self.pid > 1 else []

    def read_msg(self, deadline: float, max_bytes: int):
        """The next message, None if the deadline passed; EOFError if the worker is gone."""
        head = self._read(deadline, _HEADER.size)
        if head is None:
            return None
        (size,) = _HEADER.unpack(head)
        if size > max_bytes:
            raise EOFError(f"a reply of {size} bytes, over the protocol's {max_bytes}")
        body = self._read(max(deadline, time.monotonic() + 5.0), size)
        if body is None:
            raise EOFError("reply cut short")
        try:
            return json.loads(body)
        except Exception as exc:  # noqa: BLE001 - RecursionError (nesting) included
            raise ValueError(f"a reply that is not valid JSON ({type(exc).__name__})") from None

    def _read(self, deadline: float, n: int) -> bytes | None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        buf = b""
        while len(buf) < n:
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not poller.poll(wait_ms):
                if buf:
                    raise EOFError("reply cut short")
                return None
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("worker closed its end")
            buf += chunk
        return buf

    def take_output(self, limit: int) -> str:
        """The output the cell has written so far (head and tail past `limit`), read through
        the pool's own descriptor and bounded whatever the cell did; empties the buffer."""
        with self._out_lock:
            return self._take_output(limit)

    def _take_output(self, limit: int) -> str:
        if self.out is None:
            return ""
        try:
            size = os.fstat(self.out).st_size
            if size <= 4 * limit:
                text = os.pread(self.out, size, 0).decode("utf-8", "replace")
            else:
                head = os.pread(self.out, 4 * limit, 0).decode("utf-8", "replace")[:limit // 2]
                tail = os.pread(self.out, 4 * limit, size - 4 * limit).decode("utf-8", "replace")
                tail = tail[-(limit - limit // 2):]
                text = (f"{head}\n[... about {size - len(head) - len(tail)} characters of "
                        f"output truncated ...]\n{tail}")
            os.ftruncate(self.out, 0)
            os.lseek(self.out, 0, os.SEEK_SET)  # the worker's fds 1 and 2 share this offset
        except OSError:
            return ""
        return clip(text, limit + 100)

    def kill_others(self) -> None:
        """SIGKILL every process of the session but the worker (and its pid namespace's
        init): a timed-out cell's children, daemons included, stop with it."""
        if self.pid <= 1:
            return
        keep = {self.pid}
        if self.group is not None:
            pids = [p for p in self.pids() if p != self._init_pid()]
        else:  # no cgroup: the worker's process group (a child that left it escapes this)
            pids = [p for p in _all_pids() if p not in keep and _pgid(p) == self.pid]
        for pid in pids:
            if pid > 1 and pid not in keep:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def pause(self) -> None:
        """SIGSTOP the whole session between calls: whatever a cell left running (a thread, a
        child, a cell that forged its reply and went on) runs only inside a call's time."""
        self._stopped = self._signal_session(signal.SIGSTOP, None)

    def resume(self) -> None:
        # the processes stopped are all there are: a stopped session forks nothing
        self._signal_session(signal.SIGCONT, self._stopped)
        self._stopped = None

    def _signal_session(self, sig: int, pids: list[int] | None) -> list[int] | None:
        if self.dead or self.pid <= 1:
            return None
        if self.group is not None:  # exact: the cgroup lists only this session's processes
            todo, done = pids, set()
            for _ in range(4):  # again for any child forked while the list was read
                if todo is None:
                    todo = [p for p in self.pids()
                            if p not in done and p != self._init_pid() and p > 1]
                if not todo:
                    break
                for pid in todo:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
                done.update(todo)
                todo = None if sig == signal.SIGSTOP else []
            return sorted(done)
        if self.start_time is None:
            self.start_time = _start_time(self.pid)
        if self.start_time is not None and _start_time(self.pid) == self.start_time:
            try:  # the worker's process group (still this worker: same start time)
                os.killpg(self.pid, sig)
            except OSError:
                pass
        return None

    def _init_pid(self) -> int:
        """The session's pid namespace init (0: none), looked up once: it lives as long."""
        if self._init is None:
            self._init = next((p for p in self.pids() if _namespace_init(p)), 0)
        return self._init

    def interrupt(self) -> None:
        """SIGINT to the worker, only while it is certainly still this session's process."""
        if self.pid <= 1:
            return
        if self.group is not None:
            try:
                members = (Path(self.group) / "cgroup.procs").read_text().split()
            except OSError:
                return
            if str(self.pid) not in members:
                return
        try:
            os.kill(self.pid, signal.SIGINT)
        except OSError:
            pass

    def kill(self) -> None:
        """End the session: its pid namespace, its process group and (if any) its cgroup.

        Idempotent and thread-safe: the pool's cleanup and a thread waiting for this worker to
        start may both call it (a second close of the lifeline could hit a reused fd)."""
        with self._kill_lock:
            if self.dead:
                return
            self.dead = True
        if self.lifeline is not None:  # the namespace's init exits; the kernel kills the rest
            os.close(self.lifeline)
            self.lifeline = None
        if self.group is not None:  # exact: only this session's live processes are listed
            CgroupTree.kill_group(self.group)
            for group in self.extra_groups:
                CgroupTree.kill_group(group)
        elif self.pid > 1:  # never -1 or 0: kill(-1) would signal every process we may
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
        self.sock.close()
        with self._out_lock:  # a call reading it meanwhile must not read a reused fd number
            if self.out is not None:
                os.close(self.out)
                self.out = None
        remove_tree(self.workdir)
        if self.uid_release is not None:
            self.uid_release()
            self.uid_release = None


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
LOCALE_VARS = ("LANG", "LC_ALL", "LC_CTYPE")


def session_env(config: SandboxConfig) -> dict[str, str]:
    """The environment sessions start from: an allow-list, never the trainer's environment.

    PATH (the interpreter's bin and the system's), the locale, the BLAS thread counts and the
    variables sandbox.env names (copied when the trainer has them); the worker adds HOME,
    TMPDIR and PWD.
    """
    env = {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin",
                                    "/usr/bin", "/bin"]),
           "PYTHONHASHSEED": "0"}
    for var in LOCALE_VARS:
        if var in os.environ:
            env[var] = os.environ[var]
    env.setdefault("LANG", "C.UTF-8")
    for var in THREAD_VARS:
        env[var] = str(config.blas_threads)
    for var in config.env:
        if var in os.environ:
            env[var] = os.environ[var]
    return env


class Zygote:
    """The warm parent: a fresh interpreter that confines itself, preloads and forks workers."""

    def __init__(self, config: SandboxConfig, pool_root: str, view_root: str | None,
                 cgroup_roots: list[str]):
        self.config = config
        self.report: dict = {}
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = {k: getattr(config, k) for k in ("no_network", "preload", "memory_mb",
                                                "max_file_mb", "max_open_files",
                                                "max_processes", "max_output_chars",
                                                "drop_privileges", "tmp_mb", "disk_mb",
                                                "prelude")}
        cfg.update(pool_root=pool_root, view_root=view_root, cgroup_roots=cgroup_roots,
                   read_only_paths=[os.path.abspath(p) for p in config.read_only_paths])
        self.proc = subprocess.Popen(
            [sys.executable, "-I", CHILD_SCRIPT, json.dumps(cfg), str(child.fileno())],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=session_env(config),
            cwd="/", start_new_session=True)
        child.close()
        self.ctl = parent
        self._ready = False

    def wait_ready(self) -> None:
        """Block until the preloads are imported; a bad preload is a one-line ValueError."""
        if self._ready:
            return
        poller = select.poll()
        poller.register(self.ctl, select.POLLIN)
        if not poller.poll(int(self.config.start_timeout_s * 1000)):
            self.close()
            raise SandboxError(f"the sandbox zygote did not start within "
                               f"sandbox.start_timeout_s={self.config.start_timeout_s}")
        try:
            (size,) = _HEADER.unpack(recv_exact(self.ctl, _HEADER.size))
            msg = json.loads(recv_exact(self.ctl, size))
        except (EOFError, OSError, ValueError) as exc:
            self.close()
            raise SandboxError(f"the sandbox zygote died while starting ({exc})") from None
        if msg["errors"]:
            self.close()
            hint = ("; if it needs files outside the interpreter, site-packages and /usr, add "
                    "their directory to sandbox.read_only_paths"
                    if msg["confinement"]["view"] else "")
            raise ValueError(f"sandbox.preload={self.config.preload!r}: cannot import "
                             f"{'; '.join(msg['errors'])}; fix or remove the module{hint}")
        if msg.get("prelude_error"):
            self.close()
            raise ConfigError(f"sandbox.prelude fails: {msg['prelude_error']}; fix the code "
                              "or set sandbox.prelude to ''")
        self.report = msg
        self._ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, request: dict) -> tuple[socket.socket, int, int]:
        """Ask for one worker; returns the pool's end of its socket and of its lifeline, and
        the pool's descriptor of its output memfd (made here: the cell cannot swap it)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # before the worker can exist: its ready message must carry its credentials
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        life_r, life_w = os.pipe()
        out = os.memfd_create("aster-cell-output", os.MFD_CLOEXEC)
        try:
            data = json.dumps(request).encode()
            self.ctl.sendall(_HEADER.pack(len(data)))
            socket.send_fds(self.ctl, [data], [theirs.fileno(), life_r, out])
        except OSError:
            ours.close()
            os.close(life_w)
            os.close(out)
            raise
        finally:
            theirs.close()
            os.close(life_r)
        return ours, life_w, out

    def close(self) -> None:
        self.ctl.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()


def clip(text: str, limit: int) -> str:
    """Keep the first and last limit/2 characters with a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    omitted = len(text) - limit
    return (f"{text[:half]}\n[... {omitted} characters of output truncated ...]\n"
            f"{text[len(text) - (limit - half):]}")


def _all_pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else None


def _namespace_init(pid: int) -> bool:
    """Whether pid is pid 1 of a pid namespace below ours (a session's `cat` init)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            nspid = next((line.split()[1:] for line in fh if line.startswith("NSpid:")), [])
    except OSError:
        return False
    return len(nspid) > 1 and nspid[-1] == "1"


def _pgid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[2]) if len(fields) > 2 else -1


__all__ = ["CgroupTree", "Worker", "Zygote", "clip", "send_msg"]
