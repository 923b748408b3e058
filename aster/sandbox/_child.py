"""The zygote and worker processes of the sandbox.

Run as a script (``python -I _child.py CONFIG_JSON CTL_FD``) by the pool; it imports nothing
from aster so that the warm parent holds only the preloaded modules. The zygote imports the
preload list once inside its confinement (an empty network namespace; as root, the filesystem
view of ``_confine``), then forks one worker per request it receives on the control socket;
each request carries the worker's end of a socketpair and the read end of the session's
lifeline pipe (SCM_RIGHTS). As root each worker gets a pid namespace of its own (``cat`` on
the lifeline is its init), its own mount namespace, uid and no capabilities. A worker is a
long-lived interpreter that runs cells sent by its session, Jupyter-like, and replies with the
status and the captured output.
"""

from __future__ import annotations

import ast
import builtins
import gc
import io
import json
import linecache
import os
import resource
import signal
import socket
import struct
import sys
import traceback

if __name__ == "__main__":  # run by the pool as a script: import the sibling, not aster
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _confine as confine
    del sys.path[0]
else:
    from aster.sandbox import _confine as confine

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_HEADER = struct.Struct(">I")


def send_msg(sock: socket.socket, obj) -> None:
    """One length-prefixed JSON message."""
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError("peer closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_msg(sock: socket.socket):
    (size,) = _HEADER.unpack(recv_exact(sock, _HEADER.size))
    return json.loads(recv_exact(sock, size))


# ----------------------------------------------------------------------------- zygote


def _reap(signum=None, frame=None) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def zygote_main(cfg: dict, ctl_fd: int) -> None:
    """Confine, preload, then fork a worker per request until the pool goes away."""
    os.set_inheritable(ctl_fd, False)  # never into the pid namespaces' init (cat)
    ctl = socket.socket(fileno=ctl_fd)
    network = _leave_network(cfg)
    conf = confine.Confinement(cfg)
    conf.setup()
    errors = []
    for name in cfg["preload"]:
        try:
            __import__(name)
        except BaseException as exc:  # a bad preload is reported to the pool, not fatal here
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    sys.set_int_max_str_digits(0)
    prelude_error = check_prelude(cfg["prelude"]) if not errors else None
    confine.prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.collect()
    gc.freeze()  # keeps the collector from touching (and so copying) the preloaded objects
    send_msg(ctl, {"ready": os.getpid(), "network": network, "confinement": conf.report,
                   "errors": errors, "prelude_error": prelude_error})
    zygote_pid = os.getpid()
    while True:
        try:
            (size,) = _HEADER.unpack(recv_exact(ctl, _HEADER.size))
            data, fds, _, _ = socket.recv_fds(ctl, size, 3)
            while len(data) < size:
                data += recv_exact(ctl, size - len(data))
        except (EOFError, OSError):
            break
        for fd in fds:
            os.set_inheritable(fd, False)
        if fds:
            _fork_worker(cfg, conf, json.loads(data), fds, zygote_pid, ctl)
    os._exit(0)


def check_prelude(code: str) -> str | None:
    """Run sandbox.prelude once in a scratch namespace: the pool refuses to start when it
    fails (a one-line config error), instead of every session starting without its names.
    Its imports also land in the zygote, so workers inherit them warm."""
    if not code.strip():
        return None
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.StringIO()
    try:
        exec(compile(code, "<prelude>", "exec"), {"__name__": "__main__",
                                                  "__builtins__": builtins})
    except BaseException as exc:  # whatever the prelude raises is reported, not fatal here
        line = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return line.splitlines()[-1] if line else type(exc).__name__
    finally:
        sys.stdout, sys.stderr = saved
    return None


def _leave_network(cfg: dict) -> list:
    """[in force, detail] of the empty network namespace."""
    if not cfg["no_network"]:
        return [False, "network allowed (sandbox.no_network=false)"]
    try:
        confine.unshare(confine.CLONE_NEWNET)
    except OSError as exc:
        return [False, f"unshare(CLONE_NEWNET) failed: {exc.strerror}"]
    return [True, "none (empty network namespace)"]


def _fork_worker(cfg: dict, conf, req: dict, fds: list[int], zygote_pid: int,
                 ctl: socket.socket) -> None:
    """One worker (in a pid namespace of its own where the machine allows); fds: its socket,
    the lifeline's read end and the pool's output buffer. A failure closes the socket: the
    pool sees the worker die."""
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return
    pidns = conf.pidns
    pid = -1
    try:
        if pidns:
            conf.start_pid_namespace(fds[1], req.get("cgroup"))
        try:
            pid = os.fork()
        finally:
            if pidns and pid != 0:
                conf.end_pid_namespace()
    except OSError:
        pass
    if pid == 0:
        try:
            ctl.close()
            worker_main(cfg, conf, req, fds[0], fds[2], zygote_pid if not pidns else None)
        finally:
            os._exit(0)
    for fd in fds:
        os.close(fd)


# ----------------------------------------------------------------------------- worker setup


def _setup_process(cfg: dict, conf, req: dict, zygote_pid: int | None) -> None:
    """Session, cgroup, own view and dir, rlimits, uid and capabilities of a fresh worker."""
    os.setsid()
    if zygote_pid is not None:  # in a pid namespace the init's lifeline does this job, and
        # a session must outlive a zygote that dies (the parent is not visible there anyway)
        confine.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(1)  # the zygote died before the prctl
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if req.get("cgroup"):
        conf.join_cgroup(req["cgroup"])
    uid = req.get("uid")
    conf.enter_workdir(req["dir"], uid if conf.uid_mode in ("own", "keep_read") else None)
    conf.own_namespaces()  # IPC and network of its own (needs CAP_SYS_ADMIN: before the drop)
    mem = cfg["memory_mb"] << 20
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem),
                       (resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20),
                       (resource.RLIMIT_NOFILE, cfg["max_open_files"]),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    conf.drop_privileges(uid, cfg["max_processes"])


def _setup_streams(sock_fd: int, out: int) -> int:
    """stdin from /dev/null; stdout and stderr into the pool's memfd `out` (order kept; the
    pool reads it through its own descriptor, whatever a cell does to fds 1 and 2); other fds
    closed."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    keep = sorted({0, 1, 2, sock_fd, out})
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 65536)
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    return out


def _make_stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "wb", closefd=False)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace",
                            write_through=True)


# ----------------------------------------------------------------------------- cells


class _Cell:
    """Jupyter-like execution of cells in one persistent namespace."""

    def __init__(self, out_fd: int):
        self.out_fd = out_fd
        self.stdout = _make_stream(1)
        self.stderr = _make_stream(2)
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.count = 0
        self.in_cell = False
        self._repr = repr
        self._write = os.write

    def run(self, code: str) -> tuple[str, str]:
        self.count += 1
        name = f"<cell-{self.count}>"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        status, tail = "ok", ""
        try:
            self.in_cell = True
            status = self._exec(code, name)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                status, tail = "error", f"SystemExit: {exc.code}\n"
        except KeyboardInterrupt:
            status, tail = "interrupted", "KeyboardInterrupt\n"
        except BaseException as exc:  # everything the cell raised is the cell's result
            status, tail = "error", self._format(exc)
        finally:
            self.in_cell = False
        self._restore()
        return status, tail

    def write_tail(self, tail: str) -> None:
        """The traceback after the cell's own output, in the pool's buffer (the pool reads
        it there; replies carry no output)."""
        if tail:
            try:
                os.write(self.out_fd, tail.encode("utf-8", "backslashreplace"))
            except OSError:  # the buffer is over RLIMIT_FSIZE: the output says enough
                pass

    def prelude(self, code: str) -> str | None:
        """Run sandbox.prelude in the session's namespace before its first cell; the names it
        binds persist, its output is dropped. The error line if it failed (the zygote ran it
        fine, so only a limit of the session can make it fail here)."""
        if not code.strip():
            return None
        status, tail = self.run(code)
        self.count = 0  # the model's first cell is still <cell-1>
        try:  # its output is dropped: the pool's buffer starts empty for the first cell
            os.ftruncate(self.out_fd, 0)
            os.lseek(self.out_fd, 0, os.SEEK_SET)
        except OSError:
            pass
        if status == "ok":
            return None
        lines = tail.strip().splitlines()
        return lines[-1] if lines else status

    def _exec(self, code: str, name: str) -> str:
        try:
            tree = ast.parse(code, name)
        except (SyntaxError, ValueError) as exc:
            self._write(2, "".join(traceback.format_exception_only(type(exc), exc)).encode(
                "utf-8", "backslashreplace"))
            return "error"
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec"), self.ns)
        if last is not None:
            value = eval(compile(last, name, "eval"), self.ns)
            if value is not None:
                self.ns["_"] = value
                text = self._repr(value) + "\n"
                self._write(1, text.encode("utf-8", "backslashreplace"))
        return "ok"

    def _format(self, exc: BaseException) -> str:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # drop the worker's own frames: line numbers are the cell's
        try:
            te = traceback.TracebackException(type(exc), exc, tb, compact=True)
            _hide_own_frames(te, set())
            lines = list(te.format())
        except BaseException:  # a __str__ that raises, or a broken traceback module
            lines = [f"{type(exc).__name__}: <exception could not be printed>\n"]
        return "".join(lines)

    def _restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # the user replaced the stream with something broken
                pass
        sys.stdout, sys.stderr = self.stdout, self.stderr
        sys.__stdout__, sys.__stderr__ = self.stdout, self.stderr


def _hide_own_frames(te: traceback.TracebackException, seen: set) -> None:
    """Drop the worker's frames (input(), exit()) from a traceback and its chain."""
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != __file__])
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _hide_own_frames(other, seen)


def _no_input(*args, **kwargs):
    raise EOFError("input() is not available in the sandbox: nobody is there to type; "
                   "put the data in the code")


def _exit(code=None):
    raise SystemExit(code)


def _detach_fd(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)  # the number stays valid (the worker's socket object owns it)
    os.close(null)


def worker_main(cfg: dict, conf, req: dict, sock_fd: int, out_fd: int,
                zygote_pid: int | None) -> None:
    """Set the worker up, say ready, then run cells until the session ends."""
    _setup_process(cfg, conf, req, zygote_pid)
    out_fd = _setup_streams(sock_fd, out_fd)
    sock = socket.socket(fileno=sock_fd)
    # a child forked by a cell must not hold the pool's socket: the pool sees the worker's
    # death (an OOM kill of the session's largest process) as EOF, not as a silent timeout
    os.register_at_fork(after_in_child=lambda: _detach_fd(sock_fd))
    cell = _Cell(out_fd)
    cell._restore()
    builtins.input = _no_input
    builtins.exit = builtins.quit = _exit

    def on_sigint(signum, frame):
        if cell.in_cell:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    me = os.getpid()
    prelude_error = cell.prelude(cfg["prelude"])  # before ready: spares come with it done
    send_msg(sock, {"ready": me, "prelude_error": prelude_error})
    while True:
        try:
            req = recv_msg(sock)
        except (EOFError, OSError, ValueError):
            os._exit(0)
        status, tail = cell.run(req["code"])
        if os.getpid() != me:  # a fork made inside the cell came back here: not a worker
            os._exit(0)
        cell.write_tail(tail)
        try:
            send_msg(sock, {"seq": req["seq"], "status": status})
        except (OSError, ValueError, TypeError):
            os._exit(3)


if __name__ == "__main__":
    zygote_main(json.loads(sys.argv[1]), int(sys.argv[2]))
