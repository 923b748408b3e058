"""Issue 25, the pool's side: it never blocks on, or trusts, anything a cell controls.

Each cell here once hung or crashed the pool's own code (or was trusted by it); each test is
bounded in time (a call in a daemon thread with a deadline) and size, and after each the pool
still serves all its slots. As root the confined path (pid namespace, cgroup, view) runs.
"""

from __future__ import annotations

import threading
import time

import pytest

from aster.sandbox import SandboxConfig, SandboxPool
from aster.sandbox._procs import _namespace_init

SLOTS = 2
LIMIT = 8192  # max_output_chars, the shipped default


@pytest.fixture
def pool():  # one per test: a cell that broke the old pool must not fail the next test
    cfg = SandboxConfig(max_sessions=SLOTS, spare_workers=1, preload=["math"], timeout_s=5.0,
                        grace_s=0.3, max_output_chars=LIMIT, acquire_timeout_s=10.0)
    p = SandboxPool(cfg)
    yield p
    p.close()  # must not raise whatever a session left behind


def _bounded(fn, seconds: float):
    """fn() in a daemon thread; its result, or a test failure if it takes longer."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the pool blocked for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _serves_all_slots(pool) -> None:
    sessions = [pool.open_session() for _ in range(SLOTS)]
    try:
        assert [s.run(f"{i} + 1").output for i, s in enumerate(sessions)] == \
            [f"{i + 1}\n" for i in range(SLOTS)]
    finally:
        for s in sessions:
            s.close()


FIND_SOCKET = """
import os, stat, struct, sys, json, time
def control_sockets():
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                yield fd
        except OSError:
            pass
def send(body):
    for fd in control_sockets():
        os.write(fd, struct.pack('>I', len(body)) + body)
"""


def test_fifo_stdout_and_ignored_sigint_do_not_block_the_timeout(pool):
    """Before: after the grace the pool opened /proc/PID/fd/1, a FIFO with no writer, and
    run(timeout=2) never returned."""
    code = ("import os, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "print('before', flush=True)\n"
            "os.mkfifo('out.fifo')\nos.dup2(os.open('out.fifo', os.O_RDONLY | os.O_NONBLOCK), 1)\n"
            "while True:\n    pass")
    s = pool.open_session()  # no `with`: a close would wait for the blocked call forever
    r = _bounded(lambda: s.run(code, timeout=2), 20)
    assert r.status == "timeout" and r.state_reset and r.duration_s < 6
    assert r.output.startswith("before\n")  # the partial output, from the pool's buffer
    assert s.run("6 * 7").output == "42\n"
    s.close()
    _serves_all_slots(pool)


def test_a_deeply_nested_reply_is_a_crashed_call(pool):
    """Before: json.loads of a 20,000-deep list raised RecursionError out of run()."""
    code = FIND_SOCKET + "send(b'[' * 20000 + b']' * 20000)\ntime.sleep(3)"
    with pool.session() as s:
        r = _bounded(lambda: s.run(code, timeout=10), 20)
        assert r.status == "crashed" and r.state_reset and r.duration_s < 2
        assert "reply" in r.output and "not valid" in r.output
        assert s.run("6 * 7").output == "42\n"
    _serves_all_slots(pool)


def test_a_forged_reply_is_not_taken_as_the_result(pool):
    """Before: a fake `status ok` reply with 150,000 characters came back at once as the
    result (max_output_chars 8,192) while the real cell slept on past its timeout."""
    code = FIND_SOCKET + (
        "f = sys._getframe()\nwhile 'req' not in f.f_locals:\n    f = f.f_back\n"
        "seq = f.f_locals['req']['seq']\n"
        "send(json.dumps({'seq': seq, 'status': 'ok', 'output': 'F' * 150000}).encode())\n"
        "time.sleep(30)")
    with pool.session() as s:
        worker = s._worker
        r = _bounded(lambda: s.run(code, timeout=2), 20)
        assert r.status != "ok" and "FFFF" not in r.output
        assert len(r.output) <= LIMIT + 300
        assert r.state_reset and s._worker is not worker  # the forging interpreter is gone
        assert worker.pids() == [] or worker.group is None
        assert s.run("6 * 7").output == "42\n"
    _serves_all_slots(pool)


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_a_well_formed_forged_reply_buys_no_time_outside_the_call(pool):
    """A reply the cell forges exactly as the worker would ({seq, status}) cannot be told
    from the worker's own (same process, same uid); so the session is stopped between calls
    and the busy loop the cell went on with gets no CPU until its next call. Before: it ran
    on, unbounded, between calls."""
    code = FIND_SOCKET + (
        "f = sys._getframe()\nwhile 'req' not in f.f_locals:\n    f = f.f_back\n"
        "send(json.dumps({'seq': f.f_locals['req']['seq'], 'status': 'ok'}).encode())\n"
        "while True:\n    pass")
    with pool.session() as s:
        worker = s._worker
        r = _bounded(lambda: s.run(code, timeout=2), 20)
        assert len(r.output) <= LIMIT + 300
        time.sleep(0.3)  # the stop has landed
        before = _cpu_seconds(worker.pid)
        time.sleep(1.0)
        assert _cpu_seconds(worker.pid) - before < 0.05, "the cell ran between calls"
        # the next call runs the stale cell for its own time only, then a fresh interpreter
        nxt = _bounded(lambda: s.run("6 * 7", timeout=1), 20)
        assert nxt.status == "timeout" and nxt.duration_s < 3
        assert s.run("6 * 7").output == "42\n"
    _serves_all_slots(pool)


def test_a_3000_deep_tree_is_removed_and_frees_the_slot(pool):
    """Before: shutil.rmtree raised RecursionError in Session.close() before the slot was
    freed; the tree stayed on the host and every later pool.close() raised."""
    code = ("import os\nfd = os.open('.', os.O_RDONLY)\nfor _ in range(3000):\n"
            "    os.mkdir('d', dir_fd=fd)\n    nxt = os.open('d', os.O_RDONLY, dir_fd=fd)\n"
            "    os.close(fd)\n    fd = nxt\nos.close(fd)\n'deep'")
    s = pool.open_session()
    workdir = s._worker.workdir
    assert s.run(code, timeout=30).output == "'deep'\n"
    _bounded(s.close, 120)
    import os

    assert not os.path.exists(workdir)
    _serves_all_slots(pool)


def test_a_timeout_stops_the_cells_whole_process_tree(pool):
    """Before: SIGINT reached the worker only; the call's children (one in a session of its
    own) slept on until the session closed."""
    code = ("import os, time\nfor leave in (False, True):\n    if os.fork() == 0:\n"
            "        if leave:\n            os.setsid()\n        time.sleep(1000)\n"
            "        os._exit(0)\ntime.sleep(100)")
    with pool.session() as s:
        s.run("kept = 1")
        worker = s._worker
        r = _bounded(lambda: s.run(code, timeout=1), 20)
        assert r.status == "timeout" and not r.state_reset
        own = {worker.pid} | {p for p in worker.pids() if _namespace_init(p)}
        deadline = time.monotonic() + 5
        while set(worker.pids()) - own and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.group is not None or not pool.protections["processes"].in_force
        if worker.group is not None:
            assert set(worker.pids()) - own == set(), "the cell's children kept running"
        assert s.run("kept").output == "1\n"
    _serves_all_slots(pool)
