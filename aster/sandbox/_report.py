"""What confinement is in force on this machine: one Protection per kind, from the zygote's
report and the pool's own state (cgroups, uid), worded for `pool.enforcement` and the log."""

from __future__ import annotations

from dataclasses import dataclass

from aster.sandbox._confine import SESSION_DIR, disk_inodes
from aster.sandbox._procs import LOCALE_VARS
from aster.sandbox.config import SandboxConfig

PROTECTIONS = ("environment", "network", "filesystem", "processes", "capabilities", "uid",
               "process_limit", "memory_limit", "disk", "ipc", "keyring", "seccomp")


@dataclass(frozen=True)
class Protection:
    """One kind of confinement: whether it is in force here, and what it means (or why not)."""

    name: str
    in_force: bool
    detail: str

    def line(self) -> str:
        state = "" if self.in_force else "NOT in force: "
        return f"{self.name}: {state}{self.detail}"


def protections(cfg: SandboxConfig, ready: dict, cgroups: set[str],
                trainer_cwd: str) -> dict[str, Protection]:
    """Every kind in PROTECTIONS; `ready` is the zygote's ready message, `cgroups` the
    controllers (pids, memory) the pool made session groups with."""
    conf = ready["confinement"]
    hard = conf.get("hardening", {})
    found = [
        Protection("environment", True, "allow-list: PATH, HOME, TMPDIR, "
                   f"{'/'.join(LOCALE_VARS)}, BLAS thread counts"
                   + (f", sandbox.env: {', '.join(cfg.env)}" if cfg.env else "")
                   + "; nothing else of the trainer's environment"),
        _network(ready, hard),
        _filesystem(cfg, conf, trainer_cwd), _processes(conf), _capabilities(conf), _uid(cfg, conf),
        _process_limit(cfg, conf, "pids" in cgroups), _memory_limit(cfg, "memory" in cgroups),
        _disk(cfg, conf), *_hardening(hard),
    ]
    return {p.name: p for p in found}


def _filesystem(cfg: SandboxConfig, conf: dict, trainer_cwd: str) -> Protection:
    inside = [p for p in conf["paths"] if trainer_cwd == p or trainer_cwd.startswith(p + "/")]
    if conf["view"] and inside:
        return Protection("filesystem", False, (
            f"the trainer's working directory {trainer_cwd} is inside the read-only path "
            f"{inside[0]} of the view: sessions can read it (run from elsewhere, or drop it "
            "from sandbox.read_only_paths)"))
    if conf["view"]:
        return Protection("filesystem", True, (
            f"own root (mount namespace): read-only {', '.join(conf['paths'])}; own "
            f"directory {SESSION_DIR}; private {cfg.tmp_mb} MB /tmp; no run or data "
            "directories, home directories or repository"))
    return Protection("filesystem", False, (
        f"no own view ({conf['view_error']}): a session can read every file its uid can, "
        "the trainer's data and run directories included"))


def _processes(conf: dict) -> Protection:
    if conf["pidns"]:
        return Protection("processes", True, "own pid namespace: /proc lists only the "
                                             "session's processes; a closed session's are all "
                                             "killed")
    shown = ("/proc is not mounted in the view" if conf["view"]
             else "/proc lists every process on the machine")
    return Protection("processes", False, f"no pid namespace ({conf['pidns_error']}): {shown}")


def _capabilities(conf: dict) -> Protection:
    if conf["uid_mode"] == "keep_read":
        return Protection("capabilities", False, (
            "the interpreter's files are not world-readable and there is no filesystem view, "
            "so sessions keep CAP_DAC_READ_SEARCH (they can read any file)"))
    return Protection("capabilities", True, "none (effective, permitted, inheritable, ambient "
                                            "and, where allowed, bounding sets empty); no new "
                                            "privileges")


def _uid(cfg: SandboxConfig, conf: dict) -> Protection:
    mode = conf["uid_mode"]
    if mode in ("own", "keep_read"):
        return Protection("uid", True, f"each session runs as its own uid >= {cfg.uid_base}, "
                                       "leased machine-wide (no live session of any pool on "
                                       "this machine shares it); it cannot signal or read "
                                       "other sessions")
    if mode == "same":
        why = "the pool does not run as root: sessions run as the pool's uid"
    elif not cfg.drop_privileges:
        why = "sandbox.drop_privileges=false: sessions run as uid 0 (without capabilities)"
    else:
        why = ("the mounted interpreter or site-packages are not world-readable: sessions run "
               "as uid 0 (without capabilities)")
    return Protection("uid", False, why)


def _process_limit(cfg: SandboxConfig, conf: dict, cgroups: bool) -> Protection:
    if cgroups:
        return Protection("process_limit", True, (
            f"pids cgroup, at most {cfg.max_processes} processes per session; every process "
            "of a session is killed with it"))
    nproc = "; RLIMIT_NPROC per session uid" if conf["uid_mode"] in ("own", "keep_read") else ""
    return Protection("process_limit", False, f"no pids cgroup here: process group kill "
                                              f"only{nproc}")


def _network(ready: dict, hard: dict) -> Protection:
    in_force, detail = ready["network"]
    if not in_force:
        return Protection("network", False, detail)
    why = hard.get("session_network", "not probed")
    if why is None:
        return Protection("network", True, "none: an empty network namespace per session "
                                           "(no socket, abstract or inet, joins two sessions)")
    return Protection("network", False, (
        f"one empty network namespace for the whole pool, none per session ({why}): sessions "
        "can reach each other through abstract unix sockets"))


def _memory_limit(cfg: SandboxConfig, cgroup: bool) -> Protection:
    if cgroup:
        return Protection("memory_limit", True, (
            f"memory cgroup, {cfg.memory_mb} MB for the whole session (all its processes, "
            "memfds, shared memory and tmpfs files), swap off"))
    return Protection("memory_limit", False, (
        f"no memory cgroup here (not root, or no delegable memory controller): only "
        f"RLIMIT_AS {cfg.memory_mb} MB per process; memfds, shared memory and forked "
        "children are not bounded"))


def _disk(cfg: SandboxConfig, conf: dict) -> Protection:
    if conf["view"]:
        return Protection("disk", True, (
            f"{SESSION_DIR} is a tmpfs of its own: {cfg.disk_mb} MB, {disk_inodes(cfg.disk_mb)} "
            "inodes, gone with the session"))
    return Protection("disk", False, (
        f"no filesystem view: a session's directory is on the host's disk, bounded only by "
        f"RLIMIT_FSIZE {cfg.max_file_mb} MB per file"))


def _hardening(hard: dict) -> list[Protection]:
    lines = {"ipc": ("an IPC namespace per session: no SysV shared memory, queue or semaphore "
                     "of the host or of another session; its own die with it",
                     "sessions share the host's SysV IPC and POSIX queues"),
             "keyring": ("a fresh empty session keyring: the trainer's keys are not reachable",
                         "sessions inherit the trainer's session keyring"),
             "seccomp": ("seccomp filter: user namespaces, setns, keyrings, io_uring, bpf, "
                         "perf_event_open, ptrace and process_vm_* refused (EPERM), other ABIs "
                         "refused", "the kernel's whole syscall surface is open")}
    found = []
    for name, (good, bad) in lines.items():
        why = hard.get(name, "not probed")
        found.append(Protection(name, True, good) if why is None
                     else Protection(name, False, f"{bad} ({why})"))
    return found
