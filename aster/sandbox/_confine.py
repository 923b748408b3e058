"""Confinement of sandbox sessions: a filesystem view, pid namespaces, capabilities.

Imported by the zygote (``_child.py`` run as a script, which imports nothing from aster) and
by the pool. The zygote builds one filesystem view, once, in its own mount namespace: a
read-only tmpfs root holding read-only bind mounts of the interpreter prefix, the
site-packages directories, /usr and the library links, a few device nodes and copies of the
loader's files from /etc, then pivot_root()s into it. Per session (cheap, after the fork) a
worker copies that namespace and adds its own directory at /sandbox, a private tmpfs /tmp and a
/proc of its own pid namespace. Directories on the way to a mounted path (/root, /work, ...)
are made mode 0111 in the view: traversable, so the interpreter under /root/.pyenv works,
but not listable, and they hold nothing but the way to the mount.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import stat
import sys

if __name__ == "_confine":  # the zygote's sibling import (it imports nothing from aster)
    import _harden as harden
else:
    from aster.sandbox import _harden as harden

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_DAC_READ_SEARCH = 2
SESSION_DIR = "/sandbox"  # a session's own directory (cwd and HOME) inside the view
POOL_MOUNT = "/.aster-pool"  # the pool's session dirs; each worker unmounts it at once
STAGE_DIR = "/.aster-ro"  # read-only paths under /tmp wait here for each session's own /tmp
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime")
_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
            "urandom": (1, 9)}
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2", "shm": "/tmp"}

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_LIBC.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _ok(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _ok(_LIBC.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {source or fstype} on {target}")


def unshare(flags: int) -> None:
    _ok(_LIBC.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _ok(_LIBC.setns(fd, nstype), "setns")


def prctl(option: int, arg: int = 0) -> int:
    return _LIBC.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def _pivot_root(new_root: str, put_old: str) -> None:
    if hasattr(_LIBC, "pivot_root"):
        rc = _LIBC.pivot_root(_b(new_root), _b(put_old))
    elif os.uname().machine in _SYS_PIVOT_ROOT:
        rc = _LIBC.syscall(_SYS_PIVOT_ROOT[os.uname().machine], _b(new_root), _b(put_old))
    else:
        raise OSError(0, f"pivot_root: unknown on {os.uname().machine}")
    _ok(rc, "pivot_root")


# ----------------------------------------------------------------------------- the view


def view_paths(extra: list[str]) -> list[str]:
    """The host directories a session sees read-only, outermost only, sorted.

    The interpreter prefixes (base and venv), every site-packages / dist-packages directory
    on sys.path, /usr (shared libraries, the `cat` that runs as each pid namespace's init) and
    the extra paths of sandbox.read_only_paths. Never a sys.path entry that is anything else
    (an editable install's source tree, the current directory).
    """
    found = {"/usr", sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    for entry in sys.path:
        name = os.path.basename(entry.rstrip("/"))
        if name in ("site-packages", "dist-packages") and os.path.isdir(entry):
            found.add(entry)
    found.update(extra)
    keep: list[str] = []
    for path in sorted(os.path.abspath(p) for p in found if os.path.isdir(p)):
        if path != "/" and not any(path == k or path.startswith(k + "/") for k in keep):
            keep.append(path)
    return keep


def _skeleton_dirs(root: str, path: str) -> str:
    """Create root+path's missing directories; those on the way are mode 0111 (no listing)."""
    target = root
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        target = os.path.join(target, part)
        if not os.path.lexists(target):
            os.mkdir(target)
            os.chmod(target, 0o755 if i == len(parts) - 1 else 0o111)
    return target


def _bind_read_only(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    try:
        mount(None, target, None, flags)
    except OSError:  # the source mount carries locked flags (noexec...): keep them
        mount(None, target, None, flags | MS_NOEXEC)


def _populate(root: str, paths: list[str], pool_root: str) -> list[list[str]]:
    """Fill the view; returns [staging dir, path] for the paths under /tmp, which each session
    binds into its own /tmp (mounted on the view's /tmp, it would hide them)."""
    staged = []
    for path in paths:
        if path.startswith("/tmp/"):
            stage = f"{STAGE_DIR}/{len(staged)}"
            _bind_read_only(path, _skeleton_dirs(root, stage))
            staged.append([stage, path])
        else:
            _bind_read_only(path, _skeleton_dirs(root, path))
    for name in _SYSTEM_LINKS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), os.path.join(root, name))
        elif os.path.isdir(host) and not os.path.lexists(os.path.join(root, name)):
            _bind_read_only(host, _skeleton_dirs(root, host))
    etc = _skeleton_dirs(root, "/etc")
    for name in _ETC_FILES:
        if os.path.isfile("/etc/" + name):  # follows /etc/localtime's link
            shutil.copyfile("/etc/" + name, os.path.join(etc, name))
    _populate_dev(_skeleton_dirs(root, "/dev"))
    for mount_point in ("/proc", "/tmp", SESSION_DIR):
        _skeleton_dirs(root, mount_point)
    hidden = _skeleton_dirs(root, POOL_MOUNT)
    mount(pool_root, hidden, None, MS_BIND)
    os.chmod(root, 0o755)
    return staged


def _populate_dev(dev: str) -> None:
    """null, zero, full, random, urandom; fd and std* links into /proc; shm is /tmp."""
    for name, (major, minor) in _DEVICES.items():
        node = os.path.join(dev, name)
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(node, 0o666)
        except OSError:  # no CAP_MKNOD here: bind the host's node instead
            open(node, "w").close()
            mount("/dev/" + name, node, None, MS_BIND)
    for name, target in _DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))


def enter_view(new_root: str, pool_root: str,
               extra: list[str]) -> tuple[list[str], list[list[str]]]:
    """Build the view on the (empty) directory new_root and pivot_root into it.

    Runs once, in the zygote, before the preloads are imported: an import that fails inside the
    view fails at start-up, not in a session. Returns the paths mounted read-only and the
    staged ones (see _populate).
    """
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("tmpfs", new_root, "tmpfs", MS_NOSUID, "mode=0755,size=16m,nr_inodes=4096")
    paths = [p for p in view_paths(extra) if p != "/tmp"]  # /tmp is each session's own
    staged = _populate(new_root, paths, pool_root)
    os.chdir(new_root)
    _pivot_root(".", ".")  # the old root is stacked under the new one ...
    _ok(_LIBC.umount2(b".", MNT_DETACH), "umount old root")  # ... and detached here
    os.chdir("/")
    if staged:  # the zygote imports the preloads from them too (a venv under /tmp): a /tmp of
        # its own holding them at their paths; each session mounts its own /tmp over it
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for stage, path in staged:
            _bind_read_only(stage, _skeleton_dirs("/", path))
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    return paths, staged


def view_readable(paths: list[str]) -> bool:
    """Whether an unprivileged uid can read the mounted directories (inside the view)."""
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in paths)


def enter_session_view(name: str, uid: int | None, tmp_mb: int, own_proc: bool,
                       staged: list[list[str]], disk_mb: int = 256) -> str:
    """In a fresh worker (still root): own mount namespace, /sandbox, private /tmp and /proc.

    /sandbox is a tmpfs of disk_mb (and disk_mb * 64 inodes) owned by the session's uid: a
    session cannot fill the host's disk or inode table, and its files vanish with its mount
    namespace. The host directory is still made (empty): the pool removes it on close."""
    unshare(CLONE_NEWNS)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"mode=1777,size={tmp_mb}m,nr_inodes={max(1024, tmp_mb * 256)}")
    for stage, path in staged:
        _bind_read_only(stage, _skeleton_dirs("/", path))
        _ok(_LIBC.umount2(_b(stage), MNT_DETACH), "umount a staged path")
    host_dir = os.path.join(POOL_MOUNT, name)
    os.mkdir(host_dir, 0o700)
    if uid is not None:
        os.chown(host_dir, uid, uid)
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    mount("tmpfs", SESSION_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
          f"mode=0700,size={disk_mb}m,nr_inodes={disk_inodes(disk_mb)}{owner}")
    _ok(_LIBC.umount2(_b(POOL_MOUNT), MNT_DETACH), "umount the pool directory")
    if own_proc:  # a procfs of this session's pid namespace; read-only: no /proc/sys writes
        mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return SESSION_DIR


def disk_inodes(disk_mb: int) -> int:
    """The inode limit of a session's /sandbox: 64 per MB (16384 for the default 256 MB)."""
    return max(1024, disk_mb * 64)


# ----------------------------------------------------------------------------- capabilities


def drop_bounding_set(keep: int | None = None) -> None:
    """Empty the bounding set (but `keep`) where this process may (it needs CAP_SETPCAP, so
    call it before the uid change): no later exec can bring a capability back."""
    cap = 0
    while True:
        if cap != keep and prctl(PR_CAPBSET_DROP, cap) != 0:
            return  # EINVAL past the last capability, EPERM without CAP_SETPCAP
        cap += 1


def clear_capabilities(keep: int | None = None) -> None:
    """Empty the effective, permitted, inheritable and ambient sets (but `keep`)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    bits = 0 if keep is None else 1 << keep
    data = (ctypes.c_uint32 * 6)(bits, bits, 0, 0, 0, 0)
    if _LIBC.capset(header, data) != 0:
        os._exit(4)


def world_readable(path: str) -> bool:
    """Whether an unprivileged uid can read path and every directory above it."""
    path = os.path.realpath(path)
    while True:
        if os.stat(path).st_mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


# ----------------------------------------------------------------------------- zygote state


class Confinement:
    """What the zygote set up once (view, pid namespace handle, cgroup handle) and applies to
    each fork; ``report`` tells the pool what is in force and why not."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.view = False
        self.pidns_fd: int | None = None
        self.init_path: str | None = None
        self.cgroup_fds: list[int] = []  # the pool's root group in each hierarchy
        self.uid_mode = "same"  # own | root | keep_read | same (see _uid_mode)
        self.report: dict = {"view_error": None, "pidns_error": None, "paths": []}
        self.staged: list[list[str]] = []

    @property
    def pidns(self) -> bool:
        return self.init_path is not None

    def setup(self) -> None:
        """Open the cgroup root, probe pid namespaces and enter the view (zygote start)."""
        cfg = self.cfg
        self.cgroup_fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)
                           for root in cfg["cgroup_roots"]]
        if os.geteuid() != 0:
            self.report["view_error"] = self.report["pidns_error"] = "the pool does not run as root"
        else:
            self._enter_view_and_probe()
        self.uid_mode = self._uid_mode()
        self.report["uid_mode"] = self.uid_mode
        self.report["pidns"] = self.pidns
        self.report["view"] = self.view
        # what the per-session hardening can do here (None: it works; else why not)
        self.hardening = harden.probe(cfg)
        self.report["hardening"] = self.hardening

    def _enter_view_and_probe(self) -> None:
        try:
            self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
            unshare(CLONE_NEWPID)  # only children are affected; undone at once
            setns(self.pidns_fd, CLONE_NEWPID)
        except OSError as exc:
            self.report["pidns_error"] = str(exc)
        try:
            self.report["paths"], self.staged = enter_view(
                self.cfg["view_root"], self.cfg["pool_root"], self.cfg["read_only_paths"])
            self.view = True
        except OSError as exc:
            self.report["view_error"] = str(exc)
        if not self.view:
            self.report["pidns_error"] = (self.report["pidns_error"]
                                          or "it needs the filesystem view (for its /proc)")
        elif self.report["pidns_error"] is None:
            self.init_path = shutil.which("cat", path="/usr/bin:/bin")
            if self.init_path is None:
                self.report["pidns_error"] = "no `cat` in the view to run as the namespace's init"

    def _uid_mode(self) -> str:
        if os.geteuid() != 0:
            return "same"
        if not self.cfg["drop_privileges"]:
            return "root"
        if self.view:
            mounted = [p for p in self.report["paths"] if not p.startswith("/tmp/")]
            return "own" if view_readable(mounted + [s for s, _ in self.staged]) else "root"
        return "own" if world_readable(sys.base_prefix) else "keep_read"

    # ------------------------------------------------------------------ per fork (zygote)

    def start_pid_namespace(self, life_fd: int, group: str | None) -> int:
        """A new pid namespace whose init is `cat` reading the pool's lifeline pipe.

        When the pool closes its end (session closed, pool gone), cat exits and the kernel
        kills every process left in the namespace. The next fork lands in the namespace as
        pid 2: the worker. Call ``end_pid_namespace`` after that fork.
        """
        unshare(CLONE_NEWPID)
        try:
            # its own session: a kill of the zygote's process group must not end sessions
            actions = [(os.POSIX_SPAWN_DUP2, life_fd, 0),
                       (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                       (os.POSIX_SPAWN_DUP2, 1, 2)]
            init = os.posix_spawn(self.init_path, ["aster-sandbox-init"], {}, setsid=True,
                                  file_actions=actions)
            if group is not None:
                self.join_cgroup(group, init)
        except BaseException:
            self.end_pid_namespace()
            raise
        return init

    def end_pid_namespace(self) -> None:
        setns(self.pidns_fd, CLONE_NEWPID)  # later children are ours again (until the next)

    def join_cgroup(self, group: str, pid: int = 0) -> None:
        """Move pid (0: the caller) into the session's cgroups, through the roots' fds."""
        for root_fd in self.cgroup_fds:
            fd = os.open(f"{group}/cgroup.procs", os.O_WRONLY, dir_fd=root_fd)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ per worker

    def enter_workdir(self, name: str, uid: int | None) -> str:
        """The worker's own directory (and view), made and entered; returns its path."""
        if self.view:
            workdir = enter_session_view(name, uid, self.cfg["tmp_mb"], self.pidns,
                                         self.staged, self.cfg["disk_mb"])
            tmp = "/tmp"
        else:
            workdir = tmp = os.path.join(self.cfg["pool_root"], name)
            os.makedirs(workdir, mode=0o700, exist_ok=True)
            if uid is not None:
                os.chown(workdir, uid, uid)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR=tmp, PWD=workdir)
        return workdir

    def drop_privileges(self, uid: int | None, max_processes: int) -> None:
        """The session's uid and capabilities, by ``uid_mode``; no new privileges after."""
        mode = self.uid_mode
        if self.hardening.get("keyring") is None:  # while still root: the trainer's keys
            harden.new_session_keyring()  # are no longer possessed, whatever the uid
        if mode in ("own", "keep_read") and uid is None:
            mode = "root"  # no uid to give: stay uid 0, but without any capability
        if mode in ("own", "keep_read"):
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        keep = CAP_DAC_READ_SEARCH if mode == "keep_read" else None
        drop_bounding_set(keep)
        if mode in ("own", "keep_read"):
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            if keep is not None:
                prctl(PR_SET_KEEPCAPS, 1)
            os.setresuid(uid, uid, uid)
        clear_capabilities(keep)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if self.hardening.get("seccomp") is None:  # last: the setup above needs no filter
            harden.install_seccomp()

    def own_namespaces(self) -> None:
        """The session's own IPC (and, with no_network, network) namespace, as probed."""
        found = self.hardening
        ipc = found.get("ipc", "") is None
        net = self.cfg["no_network"] and found.get("session_network", "") is None
        flags = (harden.CLONE_NEWIPC if ipc else 0) | (harden.CLONE_NEWNET if net else 0)
        if flags:
            unshare(flags)
