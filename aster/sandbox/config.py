"""SandboxConfig: limits and preloads of the stateful Python sandbox (the `sandbox:` section)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _default_preload() -> list[str]:
    return ["math", "sympy", "numpy", "itertools", "fractions"]


@dataclass
class SandboxConfig:
    """Every limit of the sandbox. Limits are per call unless named per session.

    max_sessions: live sessions at once; a run's config needs at least
    rollout.max_concurrency of them (each trajectory in flight holds one to its end).
    acquire_timeout_s: how long an open waits for a free session (then the trajectory ends
    with finish reason sandbox_unavailable). timeout_s: wall clock per call (a call may pass
    its own); grace_s: time between the SIGINT
    sent at the deadline and the SIGKILL of the session's processes. memory_mb: address space
    (RLIMIT_AS and RLIMIT_DATA) of each session. max_output_chars: the output a call returns;
    beyond it the middle is cut out and a marker says how much. max_code_chars: the largest cell
    accepted. max_file_mb: the largest file a session may write (its output buffer included).
    max_open_files / max_processes: per session (processes via a pids cgroup where one can be
    created, else RLIMIT_NPROC under a per-session uid). drop_privileges: when the pool runs as
    root, each session runs under its own unprivileged uid (from uid_base, leased machine-wide
    so that no two live sessions of any pools share one); off, sessions run as
    uid 0 (still without capabilities). no_network: put the sessions in an empty network
    namespace where the machine allows. work_dir: where the private per-session directories
    are made (default: the system temp dir). preload: modules the warm zygote imports once, so
    sessions import them for free; it binds no names. prelude: Python every session runs
    before its first cell (e.g. ``import sympy as sp``); the names it binds persist in the
    session, its output is discarded, spares run it before they are handed out, and the pool
    checks it once at start (an error there is a one-line config error).

    Confinement (as root; ``SandboxPool.enforcement`` says what is in force): env: names of
    the trainer's environment variables a session may see, on top of the allow-list (PATH,
    HOME, LANG, TMPDIR, thread counts); nothing else of the trainer's environment reaches it.
    read_only_paths: host directories a session sees read-only at their own path, beside the
    interpreter, site-packages and /usr. tmp_mb: size of each session's private /tmp (a
    RAM-backed tmpfs). disk_mb: size of each session's /sandbox (its cwd and HOME), a tmpfs of
    its own with disk_mb * 64 inodes; like /tmp it counts toward memory_mb. memory_mb also
    bounds the whole session (all its processes, memfds, shared memory and tmpfs files)
    through a memory cgroup with swap off, where one can be made. require_confinement: refuse
    to start (a one-line error) unless every protection is in force: own filesystem view, pid
    namespace, uid, no capabilities, no network, pids and memory cgroups, own /sandbox, IPC
    namespace, keyring, seccomp filter, the environment allow-list.
    """

    timeout_s: float = 10.0
    grace_s: float = 0.5
    max_sessions: int = 256  # >= rollout.max_concurrency (checked at load): one per trajectory
    spare_workers: int = 2
    acquire_timeout_s: float = 300.0
    start_timeout_s: float = 60.0
    memory_mb: int = 2048
    max_output_chars: int = 8192
    max_code_chars: int = 100_000
    max_file_mb: int = 64
    max_open_files: int = 256
    max_processes: int = 64
    blas_threads: int = 1
    drop_privileges: bool = True
    uid_base: int = 200_000
    no_network: bool = True
    work_dir: str | None = None
    preload: list[str] = field(default_factory=_default_preload)
    prelude: str = ""
    env: list[str] = field(default_factory=list)
    read_only_paths: list[str] = field(default_factory=list)
    tmp_mb: int = 64
    disk_mb: int = 256
    require_confinement: bool = False

    def __post_init__(self):
        positive = ("timeout_s", "grace_s", "acquire_timeout_s", "start_timeout_s")
        for key in positive:
            _check(key, getattr(self, key), (int, float), lambda v: v > 0, "a number > 0")
        at_least_one = ("max_sessions", "memory_mb", "max_file_mb", "blas_threads", "tmp_mb",
                        "disk_mb")
        for key in at_least_one:
            _check(key, getattr(self, key), int, lambda v: v >= 1, "an integer >= 1")
        _check("spare_workers", self.spare_workers, int, lambda v: v >= 0, "an integer >= 0")
        _check("max_output_chars", self.max_output_chars, int, lambda v: v >= 256,
               "an integer >= 256")
        _check("max_code_chars", self.max_code_chars, int, lambda v: v >= 1, "an integer >= 1")
        _check("max_open_files", self.max_open_files, int, lambda v: v >= 16, "an integer >= 16")
        _check("max_processes", self.max_processes, int, lambda v: v >= 1, "an integer >= 1")
        _check("uid_base", self.uid_base, int, lambda v: 1000 <= v < 2**31 - 2**20,
               "an integer in [1000, 2**31 - 2**20)")
        for key in ("drop_privileges", "no_network", "require_confinement"):
            _check(key, getattr(self, key), bool, lambda v: True, "true or false")
        if self.work_dir is not None and not isinstance(self.work_dir, str):
            raise ValueError(f"sandbox.work_dir={self.work_dir!r} must be a path or null")
        if not isinstance(self.preload, list) or not all(
                isinstance(m, str) and m.replace(".", "").replace("_", "").isalnum()
                for m in self.preload):
            raise ValueError(f"sandbox.preload={self.preload!r} must be a list of module names")
        if not isinstance(self.prelude, str) or "\x00" in self.prelude:
            raise ValueError(f"sandbox.prelude={self.prelude!r} must be a string of Python "
                             "code (e.g. 'import sympy as sp')")
        if len(self.prelude) > self.max_code_chars:
            raise ValueError(f"sandbox.prelude is {len(self.prelude)} characters, over "
                             f"sandbox.max_code_chars={self.max_code_chars}; shorten it")
        if not isinstance(self.env, list) or not all(
                isinstance(v, str) and v.isidentifier() and v.isascii() for v in self.env):
            raise ValueError(f"sandbox.env={self.env!r} must be a list of environment variable "
                             "names (e.g. [SYMPY_GROUND_TYPES])")
        if not isinstance(self.read_only_paths, list) or not all(
                isinstance(p, str) and os.path.isabs(p) and os.path.normpath(p) != "/"
                for p in self.read_only_paths):
            raise ValueError(f"sandbox.read_only_paths={self.read_only_paths!r} must be a list "
                             "of absolute directory paths (not /)")


def _check(key: str, value, types, ok, what: str) -> None:
    if isinstance(value, bool) and types is not bool:
        raise ValueError(f"sandbox.{key}={value!r} must be {what}")
    if not isinstance(value, types) or not ok(value):
        raise ValueError(f"sandbox.{key}={value!r} must be {what}")
