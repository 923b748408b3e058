"""Progress of a batch of trajectories (a rollout step, an evaluation, a synthesis chunk).

The agent loop feeds one `Progress` as it goes: the tokens of every generated turn, every tool
call, every finished trajectory. On a terminal it draws a tqdm bar (trajectories done / total,
tokens/s, tool calls); otherwise (a log file, a pipe, a batch job) it logs one line every
LOG_INTERVAL_S seconds from a ticker thread, so a long evaluation speaks even while no
trajectory finishes (one 30K-token turn can take minutes). Rank 0 only: the other ranks' bars
would interleave, and their logger is quiet anyway (aster.cli.setup_logging).

`announce=True` (evaluation) also logs a line at the start and one at the end; rollouts
inside a training step leave that to the step's own log line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from tqdm import tqdm

log = logging.getLogger("aster")

# Seconds between two log lines when the output is not a terminal: often enough that a
# stalled job shows, rarely enough that a day-long run's log stays readable.
LOG_INTERVAL_S = 30.0


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts trajectories, tokens and tool calls of one batch; shows them (see the module).

    Use as a context manager (or start() / close()); the add_* methods are called from the
    agent loop's event loop, the ticker thread only reads the counters (under a lock)."""

    def __init__(self, total: int, label: str = "rollouts", *, announce: bool = False,
                 interval_s: float = LOG_INTERVAL_S, tty: bool | None = None,
                 enabled: bool | None = None, clock=time.monotonic):
        self.total, self.label, self.announce = total, label, announce
        self.interval_s = interval_s
        self.enabled = _is_rank0() if enabled is None else enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock = clock
        self.done = self.tokens = self.tool_calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._start = self._last_line = 0.0
        self.lines = 0  # log lines written (the non-terminal form)

    # ---- feeding --------------------------------------------------------------------------
    def add_tokens(self, n: int) -> None:
        with self._lock:
            self.tokens += n
        self._refresh(0)

    def add_tool_call(self) -> None:
        with self._lock:
            self.tool_calls += 1
        self._refresh(0)

    def finish_one(self) -> None:
        with self._lock:
            self.done += 1
        self._refresh(1)

    # ---- showing ---------------------------------------------------------------------------
    def start(self) -> Progress:
        self._start = self._last_line = self.clock()
        if not self.enabled or self.total <= 0:
            return self
        if self.tty:
            self._bar = tqdm(total=self.total, desc=self.label, unit="traj", leave=self.announce,
                             dynamic_ncols=True, file=sys.stderr)
        elif self.announce:
            self._line()
        # the ticker: the elapsed time on the bar, the periodic line in a log
        self._thread = threading.Thread(target=self._tick, name="aster-progress", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._bar.set_postfix_str(self._rates(), refresh=False)
            self._bar.close()
            self._bar = None
        elif self.enabled and self.total > 0 and (self.announce or self.lines):
            self._line()  # the end, where a start or a periodic line was shown

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def poll(self) -> None:
        """A log line when LOG_INTERVAL_S passed since the last one (the ticker calls this)."""
        if self._bar is None and self.clock() - self._last_line >= self.interval_s:
            self._line()

    def text(self) -> str:
        """One line: `label: done/total trajectories (pct), tokens/s, tool calls, time`."""
        with self._lock:
            done, total = self.done, self.total
        elapsed = self.clock() - self._start
        pct = 100.0 * done / total if total else 100.0
        left = f", ~{_clock(elapsed * (total - done) / done)} left" if 0 < done < total else ""
        return (f"{self.label}: {done}/{total} trajectories ({pct:.0f}%), {self._rates()}, "
                f"{_clock(elapsed)} elapsed{left}")

    def _rates(self) -> str:
        with self._lock:
            tokens, calls = self.tokens, self.tool_calls
        elapsed = max(self.clock() - self._start, 1e-9)
        return f"{tokens / elapsed:.0f} tokens/s, {calls} tool calls"

    def _line(self) -> None:
        self._last_line = self.clock()
        self.lines += 1
        log.info("%s", self.text())

    def _refresh(self, n: int) -> None:
        bar = self._bar
        if bar is not None:
            bar.set_postfix_str(self._rates(), refresh=False)
            bar.update(n)  # tqdm redraws at most every mininterval

    def _tick(self) -> None:
        step = min(1.0, self.interval_s)
        while not self._stop.wait(step):
            if self._bar is not None:
                self._bar.set_postfix_str(self._rates())  # redraws: the elapsed time moves
            else:
                self.poll()
