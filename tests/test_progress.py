"""Progress on long jobs (aster.progress): the reporter's lines and bar, and `aster eval` as a
user runs it, its output piped: it says what it will evaluate, writes its run directory and
config before the model loads, and shows progress while it runs."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time

from aster.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _progress(total=4, **kw):
    clock = FakeClock()
    kw.setdefault("tty", False)
    kw.setdefault("enabled", True)
    return Progress(total, "eval demo", clock=clock, interval_s=30.0, **kw), clock


def test_log_lines_count_trajectories_tokens_and_tool_calls(caplog):
    progress, clock = _progress(announce=True)
    with caplog.at_level(logging.INFO, logger="aster"):
        progress.start()
        clock.now += 10
        progress.add_tokens(300)
        progress.add_tool_call()
        progress.finish_one()
        progress.poll()  # 10 s since the start line: too soon for another
        clock.now += 20
        progress.poll()
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "eval demo: 0/4 trajectories (0%), 0 tokens/s, 0 tool calls, 0:00 elapsed"
    assert lines[1] == ("eval demo: 1/4 trajectories (25%), 10 tokens/s, 1 tool calls, "
                        "0:30 elapsed, ~1:30 left")
    assert len(lines) == 3 and lines[2].startswith("eval demo: 1/4 trajectories")


def test_without_announce_only_a_long_batch_logs(caplog):
    """A rollout step inside training: nothing for a short one (the step logs its own line),
    a periodic line and the end for one that runs past the interval."""
    with caplog.at_level(logging.INFO, logger="aster"):
        short, clock = _progress()
        short.start()
        clock.now += 5
        short.poll()
        short.close()
        assert caplog.records == []
        long, clock = _progress()
        long.start()
        for _ in range(4):
            clock.now += 31
            long.finish_one()
            long.poll()
        long.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "eval demo: 1/4 trajectories (25%)", "eval demo: 2/4 trajectories (50%)",
        "eval demo: 3/4 trajectories (75%)", "eval demo: 4/4 trajectories (100%)",
        "eval demo: 4/4 trajectories (100%)"]


def test_other_ranks_show_nothing(caplog, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.INFO, logger="aster"):
        progress = Progress(2, "eval", announce=True, tty=False).start()
        progress.finish_one()
        progress.close()
    assert caplog.records == [] and not progress.enabled


def test_the_ticker_thread_logs_while_nothing_finishes(caplog):
    """The periodic line comes from a thread: a trajectory stuck in one long turn still
    leaves a line in the log."""
    with caplog.at_level(logging.INFO, logger="aster"):
        progress = Progress(3, "eval slow", tty=False, enabled=True, interval_s=0.05).start()
        deadline = time.monotonic() + 10
        while progress.lines < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        progress.close()
    assert progress.lines >= 2
    assert all(r.getMessage().startswith("eval slow: 0/3 trajectories") for r in caplog.records)


def test_terminal_bar(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(2, "eval bar", announce=True, tty=True, enabled=True).start()
    progress.add_tokens(50)
    progress.add_tool_call()
    progress.finish_one()
    progress.finish_one()
    progress.close()
    last = err.getvalue().split("\r")[-1]
    assert "eval bar" in last and "2/2" in last and "tool calls" in last and "tokens/s" in last


PROGRESS_LINE = re.compile(r"eval synthetic: \d+/8 trajectories")


def test_aster_eval_shows_progress_and_writes_its_run_dir_before_it_finishes(tmp_path):
    """`aster eval` on a real tiny checkpoint with its output piped (not a terminal): the
    problems x k line before anything loads, then progress lines; the run directory and its
    config exist when the first progress line shows, before the results are written."""
    from aster.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aster.cli", "eval", "--model", model, "--device", "cpu",
           "--k", "2", "-o", str(out), "data.synthetic.num_sft=1", "data.synthetic.num_rl=1",
           "data.synthetic.num_eval=4", "data.max_rows=1", "eval.max_tokens=64",
           "eval.pass_k=[1]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tmp_path)
    watchdog = threading.Timer(300, proc.kill)  # never a hung test: the read below ends
    watchdog.start()
    seen, first, state_at_first = [], None, None
    for line in proc.stdout:
        seen.append(line.rstrip())
        if first is None and PROGRESS_LINE.search(line):
            first = time.monotonic() - start
            state_at_first = ((out / "config.yaml").is_file(), (out / "summary.json").exists())
    watchdog.cancel()
    assert proc.wait(timeout=60) == 0, "\n".join(seen)
    text = "\n".join(seen)
    assert first is not None, f"no progress line in:\n{text}"
    # the run directory and config before the model loaded; the results only at the end
    assert state_at_first == (True, False), state_at_first
    config = (out / "config.yaml").read_text()
    assert str(model) in config and "max_tokens: 64" in config
    # what is evaluated, said before the model loads; data.max_rows does not limit it
    plan = "eval synthetic: 4 problems x k=2 = 8 trajectories"
    assert plan in text and "data.max_rows does not limit aster eval" in text
    assert text.index(plan) < text.index("run directory") < text.index(
        PROGRESS_LINE.search(text).group(0))
    assert "eval synthetic: 8/8 trajectories (100%)" in text
    print(f"first progress line {first:.1f} s after the start")
