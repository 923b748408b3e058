"""The pool's session slots: a counting gate that threads and asyncio tasks can both wait on.

An asyncio task waiting for a slot holds no thread (before, a waiting open sat in the same
thread pool that runs every call and close, so enough waiting opens starved the sessions that
held the slots). A release hands its slot straight to the oldest waiter, thread or task, so a
task cannot be overtaken forever.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class _Waiter:
    """One blocked acquire: `granted` is set (under the gate's lock) when a slot is its."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake):
        self.granted = False
        self.wake = wake  # called under the gate's lock; must not block


class SlotGate:
    """`n` slots. acquire / aacquire return True with a slot, False on timeout; both raise
    `closed_error()` once the gate is closed."""

    def __init__(self, n: int, closed_error):
        self._free = n
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._closed_error = closed_error

    def acquire(self, timeout: float) -> bool:
        event = threading.Event()
        waiter = self._enqueue(event.set)
        if waiter is None:
            return True
        event.wait(timeout)
        return self._settle(waiter)

    async def aacquire(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def wake():  # from whichever thread releases; the loop may be gone by then
            loop.call_soon_threadsafe(_resolve, future)

        waiter = self._enqueue(wake)
        if waiter is None:
            return True
        try:
            await asyncio.wait([future], timeout=timeout)
        except asyncio.CancelledError:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._drop(waiter)
            if granted:  # handed a slot while being cancelled: give it on
                self.release()
            raise
        return self._settle(waiter)

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                try:
                    waiter.wake()
                except RuntimeError:  # its event loop is closed: nobody waits there
                    continue
                waiter.granted = True
                return
            self._free += 1

    def close(self) -> None:
        """Wake every waiter; they and later acquires raise `closed_error()`."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = list(self._waiters), deque()
            for waiter in waiters:
                try:
                    waiter.wake()
                except RuntimeError:
                    pass

    def _enqueue(self, wake) -> _Waiter | None:
        """None with a slot taken at once, else the queued waiter."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return None
            waiter = _Waiter(wake)
            self._waiters.append(waiter)
            return waiter

    def _settle(self, waiter: _Waiter) -> bool:
        """After the wait: a granted slot is kept even if it came at the deadline."""
        with self._lock:
            if waiter.granted:
                return True
            self._drop(waiter)
            if self._closed:
                raise self._closed_error()
            return False

    def _drop(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
