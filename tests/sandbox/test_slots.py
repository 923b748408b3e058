"""The pool's slot gate: waits that hold no thread, no slot lost to a timeout or a cancel."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aster.sandbox._slots import SlotGate


class Closed(Exception):
    pass


def test_a_release_hands_the_slot_to_the_oldest_waiter_thread_or_task():
    gate = SlotGate(1, Closed)
    assert gate.acquire(0.1)
    order = []

    async def main():
        task = asyncio.ensure_future(gate.aacquire(5.0))
        await asyncio.sleep(0.05)  # the task queues first
        thread = threading.Thread(target=lambda: order.append(("thread", gate.acquire(5.0))))
        thread.start()
        await asyncio.sleep(0.05)
        gate.release()
        order.append(("task", await task))
        gate.release()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert order == [("task", True), ("thread", True)]


def test_timeouts_and_cancels_lose_no_slot():
    gate = SlotGate(1, Closed)

    async def main():
        assert await gate.aacquire(1.0)
        assert not await gate.aacquire(0.05)  # timed out: not queued any more
        waiter = asyncio.ensure_future(gate.aacquire(5.0))
        await asyncio.sleep(0.02)
        gate.release()  # granted to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs: the slot goes back
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await gate.aacquire(0.1)

    asyncio.run(main())
    assert not gate.acquire(0.01)


def test_close_wakes_every_waiter_with_the_closed_error():
    gate = SlotGate(1, Closed)
    assert gate.acquire(0.1)

    async def main():
        waiter = asyncio.ensure_future(gate.aacquire(30.0))
        await asyncio.sleep(0.02)
        gate.close()
        with pytest.raises(Closed):
            await waiter

    asyncio.run(main())
    with pytest.raises(Closed):
        gate.acquire(0.1)
