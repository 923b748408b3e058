"""Hostile cells: each gets the expected status, the pool keeps serving, nothing leaks."""

from __future__ import annotations

import os
import re

import pytest

from tests.sandbox.conftest import assert_session_cleaned, gone

T = 1.0  # per-call timeout for the cases that should time out

DAEMON = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode()); time.sleep(1000)
    os._exit(0)
print('daemon', os.read(r, 32).decode())
"""

CASES = {
    # name: (code, expected statuses, state must survive)
    "python_infinite_loop": ("while True:\n    pass", {"timeout"}, True),
    "c_loop_regex": ("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", {"timeout"}, None),
    "c_loop_no_signal_checks": ("import collections, itertools\n"
                                "collections.deque(itertools.count(), maxlen=0)", {"timeout"}, False),
    "c_loop_bigpow": ("x = 10 ** (10 ** 9)", {"timeout"}, None),  # CPython checks signals here
    "swallow_base_exception": (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass", {"timeout"}, False),
    "ignore_sigint": ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                      "while True:\n    pass", {"timeout"}, False),
    "sleep": ("import time\ntime.sleep(100)", {"timeout"}, True),
    "sigstop_self": ("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", {"timeout"}, False),
    "memory_bomb_one_shot": ("x = bytearray(8 * 1024 ** 3)", {"error"}, True),
    "memory_bomb_gradual": ("l = []\nwhile True:\n    l.append(bytearray(50 * 2 ** 20))",
                            {"error"}, True),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", {"error", "timeout", "crashed"}, None),
    "orphaned_daemon": (DAEMON, {"ok"}, True),
    "threads_left_running": (
        "import threading, time\nthreading.Thread(target=lambda: [time.sleep(0.01) for _ in "
        "iter(int, 1)]).start()\n'started'", {"ok"}, True),
    "output_flood": ("while True:\n    print('x' * 1000)", {"timeout", "error"}, None),
    "huge_single_output": ("print('y' * 5_000_000)", {"ok"}, True),
    "invalid_utf8_and_nul": ("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00abc\\n')\n"
                             "print('a\\x00b')", {"ok"}, True),
    "os_exit": ("import os\nos._exit(0)", {"crashed"}, False),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                    {"error", "crashed"}, None),
    "kill_process_group": ("import os, signal\nos.killpg(0, signal.SIGKILL)", {"crashed"}, False),
    # in a pid namespace there is nothing else to kill (ESRCH); see _case_extra_checks
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)",
                        {"ok", "crashed", "error"}, None),
    "network": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
                {"error"}, True),
    "write_outside_dir": ("open('/work/.aster_sandbox_pwned', 'w').write('x')", {"error"}, True),
    "fill_the_disk": ("f = open('big', 'wb')\nwhile True:\n    f.write(b'0' * 2 ** 20)",
                      {"error"}, True),
    "deep_recursion": ("def f(n):\n    return f(n + 1)\nf(0)", {"error"}, True),
    "deep_recursion_c_stack": ("import sys\nsys.setrecursionlimit(10 ** 7)\n"
                               "def f(n):\n    return f(n + 1)\nf(0)", {"error", "crashed", "timeout"},
                               None),
    "segfault_ctypes": ("import ctypes\nctypes.string_at(0)", {"crashed"}, False),
    "replace_stdout": ("import sys\nsys.stdout = None\nsys.stderr = 5", {"ok"}, True),
    "replace_builtins": ("import builtins\nbuiltins.repr = None\nbuiltins.print = None",
                         {"ok"}, True),
    "close_all_fds": ("import os\nos.closerange(0, 4096)", {"ok", "crashed"}, None),
    "garbage_on_protocol_socket": (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff' * 8)\n"
        "    except OSError:\n        pass", {"ok", "crashed"}, None),
    "sys_modules_clobbered": ("import sys, json\njson.dumps = None\nsys.modules.clear()",
                              {"ok", "crashed"}, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_cell(pool, name):
    code, statuses, keeps_state = CASES[name]
    s = pool.open_session()
    s.run("canary = 'alive'")
    timeout = 10 * T if name.startswith("memory") else T  # touching 768 MB takes a while
    r = s.run(code, timeout=timeout)
    assert r.status in statuses, (r.status, r.output[-500:])
    assert r.duration_s < timeout + pool.config.grace_s + 1.0
    assert len(r.output) <= pool.config.max_output_chars + 300
    if keeps_state is not None:
        assert r.state_reset is (not keeps_state)
        survived = s.run("canary")
        assert survived.output == ("'alive'\n" if keeps_state else survived.output)
    # the session keeps serving (with a fresh interpreter if it had to be replaced)
    assert s.run("6 * 7", timeout=5).output == "42\n"
    # and so does the pool
    with pool.session() as other:
        assert other.run("1 + 1").output == "2\n"
    worker = s._worker
    extra = _case_extra_checks(pool, name, r, worker)
    s.close()
    assert_session_cleaned(worker)
    for pid in extra:
        assert gone(pid), f"process {pid} outlived its session"


def _host_pid(worker, ns_pid: int) -> int:
    """Our pid of the session's process that calls itself ns_pid (its pid namespace may differ)."""
    ns = os.readlink(f"/proc/{worker.pid}/ns/pid")
    if ns == os.readlink("/proc/self/ns/pid"):
        return ns_pid
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()
        except OSError:
            continue
        if int(nspid[-1]) == ns_pid:
            return int(entry)
    raise AssertionError(f"no process {ns_pid} in the session's pid namespace")


def _case_extra_checks(pool, name: str, r, worker) -> list[int]:
    """Per-case assertions; returns pids that must be gone once the session is closed."""
    if name == "kill_everything":
        if pool.protections["processes"].in_force:
            assert r.status == "error" and "ProcessLookupError" in r.output, r.output
        else:
            assert r.status in ("ok", "crashed"), r.output
    if name == "orphaned_daemon":
        return [_host_pid(worker, int(re.search(r"daemon (\d+)", r.output).group(1)))]
    if name == "write_outside_dir":
        assert not os.path.exists("/work/.aster_sandbox_pwned")
    if name == "invalid_utf8_and_nul":
        assert "\ufffd" in r.output and "a\x00b" in r.output
    if name in ("memory_bomb_one_shot", "memory_bomb_gradual"):
        assert "MemoryError" in r.output
    if name == "fill_the_disk":
        assert "File too large" in r.output
    if name == "network":
        assert "unreachable" in r.output or "Errno" in r.output
    if name == "huge_single_output":
        assert "truncated" in r.output
    return []


def test_zygote_killed_from_outside_is_replaced(pool):
    with pool.session() as s:
        s.run("a = 1")
        os.kill(pool._zygote.proc.pid, 9)
        assert s.run("a").output == "1\n"  # a running session does not need the zygote
    with pool.session() as t:  # a new one comes from a new zygote (or a spare)
        assert t.run("2").output == "2\n"
    for _ in range(3):
        with pool.session() as t:
            assert t.run("3").output == "3\n"
