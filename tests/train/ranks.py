"""Helpers the multi-process tests share: a free TCP port for the process group's store, and
forking N ranks that inherit the parent's imports (one thread each, see the workers)."""

from __future__ import annotations

import multiprocessing as mp
import socket


def free_port() -> int:
    """A port nothing listens on now (the rendezvous of one test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fork_ranks(rank_main, world: int, *args) -> int:
    """Run rank_main(rank, world, *args) in `world` forked processes; the largest absolute
    exit code (0 when every rank succeeded)."""
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=rank_main, args=(r, world, *args)) for r in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return max(abs(proc.exitcode) for proc in procs)
