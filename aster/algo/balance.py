"""Balanced ranks and token-budget micro batches for the RL forwards, as pure functions.

At the paper's lengths (a few hundred to 16K-30K tokens per trajectory, long-tailed by tool
turns) a split by trajectory count leaves some data-parallel ranks with several times the
tokens of others, and every collective waits for the slowest. `plan_micro_batches` assigns
trajectories (by token length; advantages are already computed, so a group may be spread over
ranks) to `world_size` ranks with the Karmarkar-Karp largest differencing method, then packs
each rank's trajectories into micro batches under a token budget so that

- every rank holds about the same number of tokens (max / mean close to 1),
- every rank runs the same number of micro batches (so the collectives of the forward and
  backward passes pair up rank by rank), and
- no micro batch exceeds the budget, except a single trajectory longer than the budget, which
  gets a micro batch of its own.

verl (verl/utils/seqlen_balancing.py) does the same in two steps: Karmarkar-Karp for the
ranks, then `rearrange_micro_batches` with the micro-batch count all-reduced to the ranks'
maximum. Here the count is agreed inside the function (it sees every rank's lengths), so the
plan is identical on every rank without a collective: each rank calls it with the global
lengths and takes `plan[rank]`.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def karmarkar_karp(lengths: Sequence[int], k: int) -> list[list[int]]:
    """Indices of `lengths` split into k parts of near-equal sums (the largest differencing
    method: repeatedly merge the two partial k-partitions with the largest spread, pairing the
    heaviest part of one with the lightest of the other). Parts may be empty when there are
    fewer items than parts; the result is deterministic (ties broken by index)."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k == 1:
        return [list(range(len(lengths)))]
    heap = []  # (-spread, tie, parts) with parts sorted by sum, heaviest first
    for tie, i in enumerate(sorted(range(len(lengths)), key=lambda j: (lengths[j], j))):
        parts = [(int(lengths[i]), [i])] + [(0, []) for _ in range(k - 1)]
        heapq.heappush(heap, (-int(lengths[i]), tie, parts))
    tie = len(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = [(sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b))]
        merged.sort(key=lambda p: (-p[0], p[1]))
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), tie, merged))
        tie += 1
    parts = [sorted(items) for _, items in heap[0][2]] if heap else [[] for _ in range(k)]
    return parts


def pack_under_budget(indices: Sequence[int], lengths: Sequence[int],
                      budget: int) -> list[list[int]]:
    """First-fit decreasing: the fewest bins this heuristic finds with each bin's tokens <=
    budget (a trajectory longer than the budget alone in its bin)."""
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(indices, key=lambda j: (-lengths[j], j)):
        for b, load in enumerate(loads):
            if load + lengths[i] <= budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return bins


def _fits(bins: list[list[int]], lengths: Sequence[int], budget: int) -> bool:
    return all(len(b) <= 1 or sum(lengths[i] for i in b) <= budget for b in bins)


def _exactly(indices: list[int], lengths: Sequence[int], budget: int,
             count: int) -> list[list[int]]:
    """`indices` in exactly `count` micro batches under the budget: balanced ones (Karmarkar-
    Karp into `count` parts) when they fit, else first-fit decreasing with its heaviest bins
    split in two until there are `count` (empty ones only when there are too few items)."""
    parts = karmarkar_karp([lengths[i] for i in indices], count)
    bins = [[indices[j] for j in p] for p in parts]
    if _fits(bins, lengths, budget):
        return bins
    bins = pack_under_budget(indices, lengths, budget)
    while len(bins) < count:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            bins.append([])
            continue
        heaviest = max(splittable, key=lambda b: (sum(lengths[i] for i in b), b))
        bins.remove(heaviest)
        halves = karmarkar_karp([lengths[i] for i in heaviest], 2)
        bins += [[heaviest[j] for j in h] for h in halves]
    return bins


def plan_micro_batches(lengths: Sequence[int], world_size: int,
                       max_tokens_per_micro_batch: int) -> list[list[list[int]]]:
    """plan[rank][micro_batch] -> trajectory indices (into `lengths`, each exactly once).

    `lengths` are the token counts the forward processes per trajectory (prompt + response).
    Every rank gets the same number of micro batches; a rank with fewer trajectories than that
    count gets empty micro batches at the end, which it must still run (a zero-token forward
    joins the collectives). Within a micro batch indices are in ascending order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    if max_tokens_per_micro_batch < 1:
        raise ValueError("max_tokens_per_micro_batch must be >= 1; got "
                         f"{max_tokens_per_micro_batch}")
    bad = [n for n in lengths if n < 0]
    if bad:
        raise ValueError(f"trajectory lengths must be >= 0; got {bad[0]}")
    lengths = [int(n) for n in lengths]
    ranks = karmarkar_karp(lengths, world_size)
    count = max(1, max(len(pack_under_budget(r, lengths, max_tokens_per_micro_batch))
                       for r in ranks))
    plan = []
    for rank in ranks:
        bins = _exactly(rank, lengths, max_tokens_per_micro_batch, count)
        bins.sort(key=lambda b: (-sum(lengths[i] for i in b), b))
        plan.append([sorted(b) for b in bins])
    return plan


def rank_tokens(plan: list[list[list[int]]], lengths: Sequence[int]) -> list[int]:
    """Tokens each rank processes under `plan`."""
    return [sum(lengths[i] for mb in rank for i in mb) for rank in plan]


def imbalance(plan: list[list[list[int]]], lengths: Sequence[int]) -> float:
    """max / mean tokens per rank (1.0 is perfect; 1.0 for an empty batch)."""
    tokens = rank_tokens(plan, lengths)
    mean = sum(tokens) / len(tokens)
    return max(tokens) / mean if mean > 0 else 1.0
