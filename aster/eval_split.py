"""Evaluation split over ranks: each rank rolls out its share of a benchmark's problems x
samples, rank 0 gathers the rows and computes the summary, every rank gets the summary.

The share is strided over the prompt-major (problem, sample) order: rank r takes pairs
r, r + world, ... so hard problems (long trajectories) spread over the ranks rather than
landing on one. Sampling seeds belong to the (problem, sample) pair, not to the rank
(aster.rollout.loop numbers a trajectory by its place in the full order), so the rows are the
ones a single rank would produce. The gathers are object collectives, which torch routes to
the process group's CPU backend (gloo) whatever serves the device tensors; the gather is in
the rollout wait's own gloo group (aster.train.rollout_wait), whose timeout fits a long
evaluation, as the ranks finish their shares at different times.
"""

from __future__ import annotations

import torch.distributed as tdist

from aster.train.rollout_wait import rollout_group


def rank_share(num_problems: int, k: int, rank: int, world: int) -> list[tuple[int, int]]:
    """This rank's (problem index, sample index) pairs of a num_problems x k evaluation."""
    pairs = [(i, s) for i in range(num_problems) for s in range(k)]
    return pairs[rank::world]


def gather_rows(rows: list[dict], dist, order: list[str]) -> list[dict]:
    """Every rank's rows on rank 0, in benchmark order, then budget, problem and sample (the
    order one rank makes them; other ranks get []); `rows` unchanged on one rank."""
    if dist is None or dist.world_size == 1:
        return rows
    parts = [None] * dist.world_size if dist.is_main else None
    # under the rollout wait's timeout: the ranks finish their shares at different times
    tdist.gather_object(rows, parts, dst=0, group=rollout_group())
    if not dist.is_main:
        return []
    place = {name: n for n, name in enumerate(order)}
    merged = [row for part in parts for row in part]
    return sorted(merged, key=lambda r: (place[r["benchmark"]], r.get("budget", 0), r["index"],
                                         r["sample"]))


def share_from_main(value, dist):
    """Rank 0's `value` on every rank."""
    if dist is None or dist.world_size == 1:
        return value
    box = [value if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
