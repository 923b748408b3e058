"""Hostile cells against the per-session confinement (issue 25), the kernel's syscall surface:
the calls the seccomp filter refuses, the other syscall ABIs, what still works under the filter,
and a unit test of the filter program. See test_resources.py for what every cell is held to.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.sandbox.hostile.cells import NR, _errnos, _requires, _run, _serves_all_slots

pytestmark = pytest.mark.skipif(NR is None, reason="no syscall table for this arch")


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
