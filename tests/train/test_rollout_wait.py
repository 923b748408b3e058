"""The wait after rollouts: a rank far behind the others does not time out the run (the ranks
meet in a gloo group with distributed.rollout_timeout_s, not the process group's timeout), and
rank 0 names the slowest rank."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta

import pytest

from aster.backend import DistInfo
from aster.config import load_config
from aster.errors import ConfigError
from aster.train import rollout_wait
from tests.train.ranks import fork_ranks, free_port

LATE_S = 4.0  # rank 1's extra rollout time; the process group's timeout is 1 s


def test_the_slowest_rank_is_named_when_ranks_are_far_apart():
    line = rollout_wait.slowest_line([300.0, 1500.0, 320.0], "rl_stage2 step 3")
    assert line.startswith("rl_stage2 step 3: rank 1 finished its rollouts last, 1200 s after "
                           "rank 0")
    assert rollout_wait.slowest_line([300.0, 310.0], "x") is None  # within a minute
    assert rollout_wait.slowest_line([1000.0, 1100.0], "x") is None  # within a quarter


def _rank_main(rank, world, port, out_dir, use_wait):
    import torch
    import torch.distributed as tdist

    code, result = 1, {}
    try:
        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                 world_size=world, timeout=timedelta(seconds=1))
        lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())
        logging.getLogger("aster").addHandler(handler)
        rollout_wait.set_rollout_timeout(60)
        rollout_s = 0.5 + (LATE_S if rank == 1 else 0.0)
        time.sleep(rollout_s)  # the rollouts
        try:
            if use_wait:
                result["metrics"] = rollout_wait.wait_for_rollouts(
                    DistInfo(rank=rank, local_rank=rank, world_size=world), rollout_s, "step 1")
            total = torch.ones(1)
            tdist.all_reduce(total)  # the training collective that follows
            result["all_reduce"] = float(total.item())
        except RuntimeError as exc:
            result["error"] = str(exc).splitlines()[0][:200]
        result["lines"] = lines
        code = 0
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(result, fh)
        os._exit(code)


@pytest.mark.parametrize("use_wait", [True, False])
def test_a_rank_late_past_the_process_group_timeout_is_waited_for(tmp_path, monkeypatch,
                                                                   use_wait):
    monkeypatch.setattr(rollout_wait, "SPREAD_LOG_S", 1.0)
    monkeypatch.setattr(rollout_wait, "_state", {"timeout_s": 60.0, "group": None,
                                                "world": None})
    assert fork_ranks(_rank_main, 2, free_port(), str(tmp_path), use_wait) == 0
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    if not use_wait:  # the control: without the wait, the 1 s collective gives up on rank 1
        assert "error" in ranks[0], ranks
        return
    assert [r.get("all_reduce") for r in ranks] == [2.0, 2.0], ranks
    assert ranks[0]["metrics"]["rollout_spread_s"] == pytest.approx(LATE_S, abs=0.5)
    assert any("rank 1 finished its rollouts last" in line for line in ranks[0]["lines"])
    assert not ranks[1]["lines"]  # rank 0 alone logs


def test_the_timeout_key_is_checked():
    assert load_config(None).distributed.rollout_timeout_s == 4 * 3600
    with pytest.raises(ConfigError, match="distributed.rollout_timeout_s"):
        load_config(None, ["distributed.rollout_timeout_s=0"])
