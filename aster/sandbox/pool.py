"""SandboxPool and Session: long-lived forked interpreters, one per session, with limits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from aster.sandbox._procs import CgroupTree, Worker, Zygote, send_msg
from aster.sandbox._remove import remove_tree
from aster.sandbox._report import Protection, protections
from aster.sandbox._slots import SlotGate
from aster.sandbox._uids import UidAllocator
from aster.sandbox.config import SandboxConfig
from aster.sandbox.result import (
    ExecResult,
    SandboxBusyError,
    SandboxClosedError,
    SandboxConfinementError,
    SandboxError,
)

log = logging.getLogger("aster.sandbox")


class SandboxPool:
    """A warm zygote, pre-forked spare workers and a bound on live sessions.

    ``with SandboxPool(cfg) as pool, pool.session() as s: s.run("x = 1")``. Thread-safe: many
    threads (or asyncio tasks through ``Session.arun``) may use different sessions at once.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config if config is not None else SandboxConfig()
        for path in self.config.read_only_paths:
            if not os.path.isdir(path):
                raise ValueError(f"sandbox.read_only_paths: {path!r} is not a directory; fix "
                                 "or remove it")
        self._closed = False
        self._cwd = os.getcwd()  # the trainer's: it must not be inside the sessions' view
        self._lock = threading.Lock()  # zygote use, spares, live set
        self._wake = threading.Condition(self._lock)
        self._slots = SlotGate(self.config.max_sessions,
                               lambda: SandboxClosedError("the sandbox pool is closed"))
        self._spares: deque[Worker] = deque()
        self._live: set[Worker] = set()
        self._starting: set[Worker] = set()  # asked of the zygote, not ready yet
        self._root = tempfile.mkdtemp(prefix="aster-sandbox-", dir=self.config.work_dir)
        os.chmod(self._root, 0o711)  # sessions under other uids must reach their own dirs
        self._is_root = os.geteuid() == 0
        # the empty directory the zygote mounts its view on (in its own mount namespace)
        self._view = tempfile.mkdtemp(prefix="aster-sandbox-view-") if self._is_root else None
        self._cgroups = CgroupTree.create(self.config.memory_mb << 20)
        self._uids = itertools.count()
        self._uid_pool = (UidAllocator(self.config.uid_base)
                          if self._is_root and self.config.drop_privileges else None)
        self._zygote = self._new_zygote()
        # runs calls, closes and the fork part of opens, never a wait for a slot: each task
        # holds a slot, so max_sessions threads (+ the closes finishing) never queue
        self._executor = ThreadPoolExecutor(max_workers=self.config.max_sessions + 2,
                                            thread_name_prefix="aster-sandbox")
        self._finalizer = weakref.finalize(self, SandboxPool._cleanup, self._zygote,
                                           self._spares, self._live, self._starting,
                                           self._cgroups, [self._root, self._view])
        self._filler = threading.Thread(target=self._fill_spares, name="aster-sandbox-spares",
                                        daemon=True)
        if self.config.require_confinement:
            self._require_confinement()
        if self.config.prelude.strip():  # a prelude that fails is a config error now, not later
            self._wait_zygote_or_close()
        self._filler.start()

    # ------------------------------------------------------------------ public

    @property
    def protections(self) -> dict[str, Protection]:
        """Each kind of confinement (environment, network, filesystem, processes,
        capabilities, uid, process_limit): whether it is in force here, and what it means."""
        with self._lock:
            self._zygote.wait_ready()
            ready = self._zygote.report
        return protections(self.config, ready, self._controllers, self._cwd)

    @property
    def missing(self) -> list[str]:
        """The names of the protections that are NOT in force on this machine."""
        return [name for name, p in self.protections.items() if not p.in_force]

    @property
    def enforcement(self) -> list[str]:
        """What isolation is actually in force on this machine, one line per kind; the
        protections that are not say ``NOT in force`` and why."""
        cfg = self.config
        notes = [p.line() for p in self.protections.values()]
        notes.append(f"memory: RLIMIT_AS/RLIMIT_DATA {cfg.memory_mb} MB; files: "
                     f"{cfg.max_file_mb} MB each, {cfg.max_open_files} open; "
                     f"BLAS threads {cfg.blas_threads}")
        return notes

    def log_confinement(self, logger: logging.Logger) -> None:
        """One log line: which protections this run lacks (a warning), or that it has all."""
        found = self.protections
        missing = [p.line() for p in found.values() if not p.in_force]
        if missing:
            logger.warning("sandbox: this run lacks %d of %d protections: %s (set "
                           "sandbox.require_confinement=true to refuse to run without them)",
                           len(missing), len(found), " | ".join(missing))
        else:
            logger.info("sandbox: fully confined (%s)", ", ".join(found))

    @contextlib.contextmanager
    def session(self):
        """A fresh Session for the duration of the ``with`` block (waits for a free slot)."""
        session = self.open_session()
        try:
            yield session
        finally:
            session.close()

    @contextlib.asynccontextmanager
    async def asession(self):
        """The asyncio twin of ``session()``: the wait for a slot holds no thread."""
        self._check_open()
        if not await self._slots.aacquire(self.config.acquire_timeout_s):
            raise self._busy()
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(self._executor, self._open_with_slot)
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the open goes on in its thread: close what it gives
            opening.add_done_callback(_close_opened)
            raise
        try:
            yield session
        finally:
            await loop.run_in_executor(self._executor, session.close)

    def open_session(self) -> Session:
        """A new Session; close it with ``Session.close()`` (or use ``session()``)."""
        self._check_open()
        if not self._slots.acquire(self.config.acquire_timeout_s):
            raise self._busy()
        return self._open_with_slot()

    def _open_with_slot(self) -> Session:
        try:
            return Session(self, self._take_worker())
        except BaseException:
            self._slots.release()
            raise

    def _busy(self) -> SandboxBusyError:
        return SandboxBusyError(f"no free sandbox session within sandbox.acquire_timeout_s="
                                f"{self.config.acquire_timeout_s} (sandbox.max_sessions="
                                f"{self.config.max_sessions} are open)")

    def close(self) -> None:
        """Kill every session and spare, stop the zygote, remove the cgroups and directories."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._slots.close()
        if self._filler.ident is not None:  # started
            self._filler.join(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    @property
    def _uid_enabled(self) -> bool:
        """Whether each session runs under a uid of its own."""
        with self._lock:
            self._zygote.wait_ready()
            return self._zygote.report["confinement"]["uid_mode"] in ("own", "keep_read")

    @property
    def _controllers(self) -> set[str]:
        return self._cgroups.controllers if self._cgroups is not None else set()

    def _new_zygote(self) -> Zygote:
        roots = [str(d) for d in self._cgroups.dirs] if self._cgroups is not None else []
        return Zygote(self.config, self._root, self._view, roots)

    def _require_confinement(self) -> None:
        """sandbox.require_confinement: a one-line error unless every protection holds."""
        try:
            missing = [p.line() for p in self.protections.values() if not p.in_force]
        except BaseException:
            self.close()
            raise
        if missing:
            self.close()
            raise SandboxConfinementError(
                "sandbox.require_confinement=true but this machine cannot confine the sandbox: "
                + " | ".join(missing) + " (run as root on Linux with cgroups, or set "
                "sandbox.require_confinement=false to accept it)")

    def _wait_zygote_or_close(self) -> None:
        try:
            with self._lock:
                self._zygote.wait_ready()
        except BaseException:
            self.close()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError("the sandbox pool is closed")

    def _take_worker(self) -> Worker:
        with self._lock:
            self._check_open()
            worker = None
            while self._spares:
                candidate = self._spares.popleft()
                if self._still_alive(candidate):
                    worker = candidate
                    break
                candidate.kill()
            if worker is not None:
                self._live.add(worker)
                self._wake.notify_all()
                return worker
            worker = self._request_locked()
            zygote = self._zygote
        try:
            self._await_ready(worker)
        except SandboxError:
            with self._lock:
                if zygote is self._zygote and zygote.alive():
                    raise
                # the zygote died with our request in flight: once more, from a new zygote
                worker = self._request_locked()
            self._await_ready(worker)
        with self._lock:
            self._starting.discard(worker)
            if self._closed:
                worker.kill()
                self._check_open()
            self._live.add(worker)
            self._wake.notify_all()
        return worker

    def _still_alive(self, worker: Worker) -> bool:
        try:
            return worker.read_msg(time.monotonic(), 1 << 16) is None
        except (EOFError, OSError, ValueError):
            return False

    def _request_locked(self) -> Worker:
        """Ask the zygote for one worker (restarting it if it died); `_await_ready` (without
        the lock, so that taking a spare meanwhile does not wait) finishes the start."""
        self._live_zygote_locked()
        n = next(self._uids)
        name = f"s{n}"
        group = None
        if self._cgroups is not None:  # + the pid namespace's init, where there is one
            pidns = self._zygote.report["confinement"]["pidns"]
            group = self._cgroups.new_group(self.config.max_processes + int(pidns))
        uid, release = self._lease_uid(group)
        request = {"dir": name, "uid": uid, "cgroup": group and os.path.basename(group)}
        try:
            try:
                sock, lifeline, out = self._zygote.fork(request)
            except OSError:  # killed, and exiting now: poll() did not know yet
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._zygote.proc.wait(timeout=5)
                self._live_zygote_locked()
                sock, lifeline, out = self._zygote.fork(request)
        except BaseException:
            if release is not None:
                release()
            raise
        worker = Worker(-1, sock, os.path.join(self._root, name), group, lifeline, out)
        worker.uid_release = release
        worker.extra_groups = self._cgroups.siblings(group) if group is not None else []
        self._starting.add(worker)  # the pool's cleanup kills it if it closes meanwhile
        return worker

    def _lease_uid(self, group: str | None):
        """A uid no live session on this machine has (see _uids), and what frees it."""
        if self._uid_pool is None:
            return None, None
        try:
            uid, fd = self._uid_pool.acquire()
        except BaseException:
            if group is not None:
                for made in [group, *self._cgroups.siblings(group)]:
                    CgroupTree.kill_group(made)
            raise
        return uid, lambda: self._uid_pool.release(uid, fd)

    def _live_zygote_locked(self) -> None:
        self._zygote.wait_ready()
        if self._zygote.alive():
            return
        log.warning("sandbox zygote died; starting a new one")
        self._zygote.close()
        self._zygote = self._new_zygote()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, SandboxPool._cleanup, self._zygote,
                                           self._spares, self._live, self._starting,
                                           self._cgroups, [self._root, self._view])
        self._zygote.wait_ready()

    def _await_ready(self, worker: Worker) -> None:
        """Wait for the worker's ready message; SandboxError (worker killed) if it fails."""
        try:
            msg = worker.read_ready(time.monotonic() + self.config.start_timeout_s)
            why = f"ready message {msg!r}, pid {worker.pid}"
        except (EOFError, OSError, ValueError) as exc:
            msg, why = None, str(exc)
        if not isinstance(msg, dict) or "ready" not in msg or worker.pid <= 1:
            with self._lock:
                self._starting.discard(worker)
                closed = self._closed
            if not closed:
                log.warning("sandbox worker failed to start: %s", why)
            worker.kill()
            raise SandboxError("a sandbox worker failed to start; see the log")
        if msg.get("prelude_error"):
            log.warning("sandbox: sandbox.prelude failed in a session (%s); it runs without the "
                        "names the prelude binds", msg["prelude_error"])

    def _fill_spares(self) -> None:
        """Background: keep config.spare_workers forked and waiting."""
        while True:
            with self._lock:
                while not self._closed and len(self._spares) >= self.config.spare_workers:
                    self._wake.wait(timeout=1.0)
                if self._closed:
                    return
                try:
                    worker = self._request_locked()
                except (SandboxError, ValueError, OSError) as exc:
                    log.warning("sandbox: could not pre-fork a spare worker: %s", exc)
                    self._wake.wait(timeout=1.0)
                    continue
            try:
                self._await_ready(worker)
            except SandboxError as exc:
                with self._lock:
                    if not self._closed:
                        log.warning("sandbox: could not pre-fork a spare worker: %s", exc)
                        self._wake.wait(timeout=1.0)
                continue
            with self._lock:
                self._starting.discard(worker)
                if self._closed:
                    worker.kill()
                    return
                self._spares.append(worker)
                self._wake.notify_all()

    def _retire(self, worker: Worker) -> None:
        with self._lock:
            self._live.discard(worker)
        worker.kill()

    def _replace(self, worker: Worker) -> Worker:
        self._retire(worker)
        fresh = self._take_worker()
        return fresh

    @staticmethod
    def _cleanup(zygote, spares, live, starting, cgroups, dirs) -> None:
        # one session's leftovers never stop the others' cleanup, nor make close() raise
        for worker in list(spares) + list(live) + list(starting):
            try:
                worker.kill()
            except Exception as exc:  # noqa: BLE001
                log.warning("sandbox: killing a session failed: %s: %s",
                            type(exc).__name__, exc)
        spares.clear()
        live.clear()
        starting.clear()
        for step in ((cgroups.remove if cgroups is not None else None), zygote.close):
            try:
                if step is not None:
                    step()
            except Exception as exc:  # noqa: BLE001
                log.warning("sandbox: pool cleanup: %s: %s", type(exc).__name__, exc)
        for path in dirs:  # the view's mount point is empty on this side
            remove_tree(path)


class Session:
    """One live interpreter: state persists across ``run`` calls until ``close``."""

    def __init__(self, pool: SandboxPool, worker: Worker):
        self._pool = pool
        self._worker: Worker | None = worker
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True after ``close()`` (or once the pool is closed)."""
        return self._worker is None or self._pool._closed

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell; never raises for anything the code does (see ExecResult.status)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(f"timeout={timeout!r} must be a number of seconds > 0")
        cfg = self._pool.config
        with self._lock:
            if self.closed:
                raise SandboxClosedError("this sandbox session is closed")
            if not code.strip():
                return ExecResult("error: the code is empty; send the Python to run",
                                  "error", 0.0)
            if len(code) > cfg.max_code_chars:
                return ExecResult(f"error: the code is {len(code)} characters, over the "
                                  f"limit of {cfg.max_code_chars}; send less at a time",
                                  "error", 0.0)
            return self._call(code, cfg.timeout_s if timeout is None else float(timeout))

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        """The asyncio twin of ``run`` (runs on the pool's thread pool)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool._executor, self.run, code, timeout)

    def close(self) -> None:
        """Kill the interpreter and free the slot; closing twice is harmless."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            try:
                self._pool._retire(worker)
            finally:  # the slot is free whatever the removal of the session met
                self._pool._slots.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, code: str, timeout: float) -> ExecResult:
        worker = self._worker
        worker.seq += 1
        start = time.monotonic()
        worker.resume()
        try:
            send_msg(worker.sock, {"seq": worker.seq, "code": code})
            reply = worker.read_msg(start + timeout, MAX_REPLY_BYTES)
            if reply is None:
                result = self._interrupt(worker, start, timeout)
            else:
                result = self._result(worker, _status(reply, worker.seq), start)
        except (EOFError, OSError, ValueError, TypeError) as exc:
            result = self._crashed(worker, start, exc)
        # A reply cannot be told from one the cell forged (same process, same uid): so the
        # session stops until its next call, and nothing of it runs outside a call's time
        self._worker.pause()
        return result

    def _result(self, worker: Worker, status: str, start: float) -> ExecResult:
        if status not in ("ok", "error"):
            status = "error"  # a KeyboardInterrupt the code raised itself
        output = worker.take_output(self._pool.config.max_output_chars)
        return ExecResult(output, status, time.monotonic() - start)

    def _interrupt(self, worker: Worker, start: float, timeout: float) -> ExecResult:
        """Past the deadline: the session's other processes SIGKILLed, SIGINT to the
        interpreter, a grace period, then SIGKILL and a fresh interpreter."""
        cfg = self._pool.config
        note = f"TimeoutError: the code ran longer than {timeout:g} s and was interrupted"
        try:
            worker.kill_others()
            worker.interrupt()
            reply = worker.read_msg(time.monotonic() + cfg.grace_s, MAX_REPLY_BYTES)
            stopped = reply is not None and _status(reply, worker.seq) is not None
        except (EOFError, OSError, ValueError, TypeError):
            stopped = False
        output = worker.take_output(cfg.max_output_chars)
        if stopped:
            if output.endswith("KeyboardInterrupt\n"):
                output = output[: -len("KeyboardInterrupt\n")]
            return ExecResult(_append(output, note), "timeout", time.monotonic() - start)
        self._worker = self._pool._replace(worker)
        note += ("; it did not stop, so the interpreter was restarted and all variables were "
                 "lost")
        return ExecResult(_append(output, note), "timeout", time.monotonic() - start,
                          state_reset=True)

    def _crashed(self, worker: Worker, start: float, why: Exception) -> ExecResult:
        if not (isinstance(why, ValueError) or str(why).startswith("a reply")):
            note = ("the Python process crashed (a segfault, os._exit or a kill); the "
                    "interpreter was restarted and all variables were lost")
        else:  # something in the session wrote onto the sandbox's own channel
            note = (f"the sandbox's reply to this call was not valid ({why}); the interpreter "
                    "was restarted and all variables were lost")
        self._worker = self._pool._replace(worker)
        return ExecResult(note, "crashed", time.monotonic() - start, state_reset=True)


# A reply is {"seq": n, "status": s}: the output never travels in it (the pool reads its own
# buffer), so anything longer is not the worker's
MAX_REPLY_BYTES = 256


def _status(reply, seq: int) -> str:
    """The status of a well-formed reply to call `seq`; ValueError for anything else."""
    if not isinstance(reply, dict) or set(reply) != {"seq", "status"}:
        raise ValueError("not a reply of the sandbox's protocol")
    if reply["seq"] != seq or not isinstance(reply["status"], str):
        raise ValueError("a reply out of sequence")
    return reply["status"]


def _close_opened(opening) -> None:
    """Done callback of an open whose waiter was cancelled: close the session it made."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _append(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line
