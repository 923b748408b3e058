"""init_distributed and the AVG all-reduce on a real 2-process gloo group."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from aster.backend import select_backend

    be = select_backend("cpu")
    info = be.init_distributed(timeout_s=60)
    try:
        x = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
        dist.all_reduce(x)  # a collective on the group init_distributed made
        out.put((info.rank, info.world_size, dist.get_backend(), x.tolist()))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_init_and_sum():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[:3] for r in results] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for r in results:
        assert r[3] == [3.0, 30.0]


def test_single_process_needs_no_process_group(monkeypatch):
    from aster.backend import select_backend

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    be = select_backend("cpu")
    info = be.init_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert not dist.is_initialized()
