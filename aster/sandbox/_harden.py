"""Per-session kernel hardening: own IPC and network namespaces, an empty session keyring and
a seccomp filter. Imported by the zygote as a sibling script module (it imports nothing from
aster) and by the pool's report.

The seccomp filter is classic BPF written here by hand (no libseccomp: no native dependency).
It refuses, with EPERM, the calls a session needs for nothing and that widen the kernel's
attack surface: user namespaces (unshare/clone with CLONE_NEWUSER; clone3, whose flags sit
behind a pointer the filter cannot read, answers ENOSYS so that libc falls back to clone),
setns, the keyring calls, io_uring, bpf, perf_event_open, ptrace and process_vm_readv/writev.
A syscall of another ABI (i386 or x32 on x86_64) is refused outright: its numbers mean other
calls and would slip past the list.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import struct

CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
KEYCTL_JOIN_SESSION_KEYRING = 1
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000

# per arch: AUDIT_ARCH, then the numbers of what is refused (asm/unistd_64.h, asm-generic)
_ARCH = {
    "x86_64": (0xC000003E, {
        "ptrace": 101, "keyctl": 250, "add_key": 248, "request_key": 249, "unshare": 272,
        "clone": 56, "clone3": 435, "setns": 308, "bpf": 321, "perf_event_open": 298,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "process_vm_readv": 310, "process_vm_writev": 311}),
    "aarch64": (0xC00000B7, {
        "ptrace": 117, "keyctl": 219, "add_key": 217, "request_key": 218, "unshare": 97,
        "clone": 220, "clone3": 435, "setns": 268, "bpf": 280, "perf_event_open": 241,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "process_vm_readv": 270, "process_vm_writev": 271}),
}
REFUSED = ("ptrace", "keyctl", "add_key", "request_key", "setns", "bpf", "perf_event_open",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "process_vm_readv",
           "process_vm_writev")

# classic BPF opcodes (linux/filter.h)
_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data; arg0's low word (LE)

_LIBC = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _assemble(code: list[tuple]) -> bytes:
    """(op, k) / (op, k, true_label, false_label) / ("label", name) -> struct sock_filter[]."""
    labels, at = {}, 0
    for ins in code:
        if ins[0] == "label":
            labels[ins[1]] = at
        else:
            at += 1
    out, at = [], 0
    for ins in code:
        if ins[0] == "label":
            continue
        op, k, jt, jf = (*ins, None, None)[:4]
        rel = [0 if j is None else labels[j] - at - 1 for j in (jt, jf)]
        if not all(0 <= r < 256 for r in rel):
            raise ValueError(f"seccomp: jump out of range at {at}")
        out.append(struct.pack("=HBBI", op, rel[0], rel[1], k))
        at += 1
    return b"".join(out)


@functools.lru_cache(maxsize=4)  # built once in the zygote (probe), reused by every worker
def seccomp_program(machine: str | None = None) -> bytes:
    """The filter for this machine's arch; ValueError for an arch without a table."""
    machine = machine or os.uname().machine
    if machine not in _ARCH:
        raise ValueError(f"no syscall table for {machine}")
    audit_arch, nr = _ARCH[machine]
    code: list[tuple] = [(_LD_ABS_W, _OFF_ARCH), (_JEQ, audit_arch, "arch_ok", "deny"),
                         ("label", "arch_ok"), (_LD_ABS_W, _OFF_NR)]
    if machine == "x86_64":
        code.append((_JGE, _X32_BIT, "deny", "native"))
        code.append(("label", "native"))
    for name in REFUSED:
        code.append((_JEQ, nr[name], "deny", f"n_{name}"))
        code.append(("label", f"n_{name}"))
    code += [(_JEQ, nr["clone3"], "enosys", "n_clone3"), ("label", "n_clone3"),
             (_JEQ, nr["unshare"], "ns_flags", "n_unshare"), ("label", "n_unshare"),
             (_JEQ, nr["clone"], "ns_flags", "allow"),
             ("label", "ns_flags"), (_LD_ABS_W, _OFF_ARG0),
             (_JSET, CLONE_NEWUSER, "deny", "allow"),
             ("label", "allow"), (_RET, _RET_ALLOW),
             ("label", "deny"), (_RET, _RET_ERRNO | errno.EPERM),
             ("label", "enosys"), (_RET, _RET_ERRNO | errno.ENOSYS)]
    return _assemble(code)


def install_seccomp() -> None:
    """Load the filter on this thread (needs no_new_privs or CAP_SYS_ADMIN); OSError if not."""
    prog = seccomp_program(os.uname().machine)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    rc = _LIBC.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                     ctypes.byref(fprog), 0, 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def new_session_keyring() -> None:
    """Join a fresh anonymous session keyring: the trainer's keys are no longer possessed."""
    nr = _ARCH.get(os.uname().machine, (0, {}))[1].get("keyctl")
    if nr is None:
        raise OSError(errno.ENOSYS, "keyctl: unknown syscall number here")
    if _LIBC.syscall(nr, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")


def own_namespaces(network: bool) -> None:
    """A fresh IPC namespace (and network namespace): nothing shared with other sessions."""
    flags = CLONE_NEWIPC | (CLONE_NEWNET if network else 0)
    if _LIBC.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def probe(cfg: dict) -> dict:
    """In the zygote (root, before any session): which of these this machine allows, each
    None (works) or why not. Run in a throwaway child, so the zygote itself keeps its state."""
    try:
        seccomp_program(os.uname().machine)  # cached before the workers fork
    except ValueError:
        pass  # an arch without a table: the seccomp check below says so
    checks = {"ipc": lambda: own_namespaces(False), "keyring": new_session_keyring,
              "seccomp": _probe_seccomp}
    if cfg["no_network"]:
        checks["session_network"] = lambda: own_namespaces(True)
    report = {}
    for name, check in checks.items():
        report[name] = _in_child(check)
    return report


def _probe_seccomp() -> None:
    if _LIBC.prctl(38, ctypes.c_ulong(1), 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    install_seccomp()
    if _LIBC.syscall(_ARCH[os.uname().machine][1]["keyctl"], 0, 0) >= 0 or \
            ctypes.get_errno() != errno.EPERM:
        raise OSError(errno.EINVAL, "the filter loaded but keyctl was not refused")


def _in_child(check) -> str | None:
    """Run check() in a forked child; None if it passed, else the error's text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            check()
            msg = b""
        except BaseException as exc:  # any failure is the probe's answer
            msg = (str(exc) or type(exc).__name__).encode()[:500]
        os.write(w, msg or b"\0")
        os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 1000)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return None if data == b"\0" else (data.decode(errors="replace") or "the probe died")
