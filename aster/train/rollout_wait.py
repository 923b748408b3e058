"""The wait after rollouts: ranks roll out on their own, and a long-tailed stage-2 rollout
can leave one rank 10-30 minutes behind another. The first collective after the rollouts
would then wait under the process group's timeout (`distributed.timeout_s`), sized for a
training collective, and end a healthy run. So ranks meet first in a gloo group of their own
whose timeout is `distributed.rollout_timeout_s`, exchanging how long each rolled out; when
they were far apart, rank 0 logs which rank was slowest. The evaluation's gathers go through
the same group (aster.eval_split): a 90K-token evaluation is the longest rollout of a run.

The group is created at its first use, which every rank reaches in the same order (the first
RL step or the first evaluation), as torch's new_group requires.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch.distributed as tdist

log = logging.getLogger("aster")

DEFAULT_TIMEOUT_S = 4 * 3600.0
# ranks this far apart (seconds, and a quarter of the slowest rank's time) are worth a line
SPREAD_LOG_S = 60.0

_state: dict = {"timeout_s": DEFAULT_TIMEOUT_S, "group": None, "world": None}


def set_rollout_timeout(timeout_s: float) -> None:
    """The timeout of the rollout group (a run's start, on every rank); a group made with
    another timeout is replaced at its next use."""
    if float(timeout_s) != _state["timeout_s"]:
        _state.update(timeout_s=float(timeout_s), group=None, world=None)


def rollout_group():
    """The gloo group of the rollout-phase waits, created collectively at its first use under
    the current process group (a new one after the process group was re-initialised)."""
    world = tdist.group.WORLD
    if _state["group"] is None or _state["world"] is not world:
        _state["group"] = tdist.new_group(backend="gloo",
                                          timeout=timedelta(seconds=_state["timeout_s"]))
        _state["world"] = world
    return _state["group"]


def slowest_line(seconds: list[float], what: str) -> str | None:
    """The log line naming the slowest rank, when the ranks finished far apart."""
    slow = max(range(len(seconds)), key=seconds.__getitem__)
    fast = min(range(len(seconds)), key=seconds.__getitem__)
    spread = seconds[slow] - seconds[fast]
    if spread < max(SPREAD_LOG_S, 0.25 * seconds[slow]):
        return None
    return (f"{what}: rank {slow} finished its rollouts last, {spread:.0f} s after rank {fast} "
            f"({seconds[slow]:.0f} s vs {seconds[fast]:.0f} s); the others waited for it")


def wait_for_rollouts(dist, rollout_s: float, what: str) -> dict:
    """Meet the other ranks after this rank's rollouts (which took `rollout_s`), under the
    rollout timeout; returns the spread as a metric. One rank: nothing to wait for."""
    if dist is None or dist.world_size == 1:
        return {}
    seconds: list = [None] * dist.world_size
    tdist.all_gather_object(seconds, float(rollout_s), group=rollout_group())
    line = slowest_line(seconds, what)
    if line is not None and dist.is_main:
        log.warning(line)
    return {"rollout_spread_s": max(seconds) - min(seconds)}
