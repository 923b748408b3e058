"""The run directory is agreed on by rank 0 alone: a fresh --output-dir launched with two ranks
must not be refused because rank 0 created state.json before rank 1 looked (a real race under
torchrun), and a reused one is refused on every rank with the same message."""

from __future__ import annotations

import os
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from tests.train.ranks import free_port


def _worker(rank: int, port: int, run_dir: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.errors import AsterUserError
    from aster.train import pipeline

    info = select_backend("cpu").init_distributed(timeout_s=60)
    real_broadcast = pipeline._broadcast

    def slow_broadcast(value, d):  # rank 1 lags: rank 0 has written state.json meanwhile
        result = real_broadcast(value, d)
        if rank == 1:
            time.sleep(0.5)
        return result

    pipeline._broadcast = slow_broadcast
    cfg = load_config("tiny")
    results = []
    for resume in (False, False, True):
        try:
            results.append(str(pipeline.prepare_run_dir(cfg, "tiny", run_dir, resume, info)))
        except AsterUserError as e:
            results.append(f"error: {e}")
        dist.barrier()
    out.put((rank, results))
    dist.destroy_process_group()


def test_two_ranks_agree_on_a_fresh_then_reused_run_dir(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    run_dir = str(tmp_path / "run")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, run_dir, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    fresh, reused, resumed = results[0]
    assert fresh == run_dir and resumed == run_dir
    assert reused.startswith("error: ") and "--resume" in reused
    assert results[1] == results[0]


def _on_main_worker(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    from aster.backend import select_backend
    from aster.data.io import DataError
    from aster.train import pipeline

    info = select_backend("cpu").init_distributed(timeout_s=600)
    built = []
    pipeline.on_main(info, lambda: built.append(rank), "building")

    def bad_input():
        raise DataError("data.sft_path='x.parquet': no usable rows; give another file")

    t0 = time.perf_counter()
    try:
        pipeline.on_main(info, bad_input, "generating the synthetic task")
        outcome = "no error"
    except DataError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    out.put((rank, built, outcome, time.perf_counter() - t0))
    dist.destroy_process_group()


def test_rank_0_work_fails_on_every_rank_with_its_one_line(tmp_path):
    """What rank 0 builds alone (the synthetic task, the tiny model) and fails on stops every
    rank with the same one-line error at once; before, the other ranks waited at a barrier for
    the process group's timeout (distributed.timeout_s, 30 min by default)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_on_main_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: rest for rank, *rest in (queue.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
    assert results[0][0] == [0] and results[1][0] == []  # rank 0 alone built
    expected = "DataError: data.sft_path='x.parquet': no usable rows; give another file"
    assert results[0][1] == results[1][1] == expected
    assert results[1][2] < 60
