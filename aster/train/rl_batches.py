"""Where a GRPO step's trajectories are trained: balanced ranks, token-budget micro batches.

After the rollouts each rank holds the groups it generated (their advantages are computed
there, whole groups). From then on a trajectory is just tokens, a loss mask, an advantage and
the engine's log-probs, so it may be trained anywhere: `plan_step` assigns every mini batch's
trajectories to ranks and micro batches by token length (aster.algo.balance: Karmarkar-Karp
across ranks, packed under `rl.max_tokens_per_micro_batch` within a rank, the same number of
micro batches on every rank) and `exchange` moves each trajectory to the rank the plan gives it,
one all_to_all through the process group (CPU bytes: gloo serves them under every collective).

Every rank computes the same plan from the same global lengths (one all-reduce), so no rank
needs to be told what the others do. The mini batches themselves are unchanged: mini batch m
is the union of every rank's m-th share of its groups, as before. Normalisers stay global
(aster.algo.loss.mini_batch_counts sums over ranks).
"""

from __future__ import annotations

import functools
import math
import pickle
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from aster.algo import build_micro_batch, mini_batches
from aster.algo.balance import plan_micro_batches


@dataclass
class Sample:
    """What the update needs of one trajectory, wherever it was generated."""

    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]
    adv: float
    rollout_logprobs: list[float]

    @property
    def length(self) -> int:
        """Tokens its forward processes."""
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class StepPlan:
    """This rank's part of a step: its samples by global key (rank * num_local + local index
    on the generating rank) and, per mini batch, its micro batches as lists of keys."""

    samples: dict[int, Sample]
    minis: list[list[list[int]]]
    num_local: int  # trajectories each rank generated
    stats: dict = field(default_factory=dict)  # the plan's token counts (every rank's)

    def keys(self) -> list[int]:
        """Every key this rank trains on, in plan order."""
        return [k for mini in self.minis for micro in mini for k in micro]


def plan_step(ctx, trajs, adv, budget: int | None = None) -> StepPlan:
    """The step's plan on every rank (a collective: one all-reduce and one all_to_all).
    `trajs` are this rank's trajectories, whole groups in order, `adv` their advantages."""
    rl, dist = ctx.cfg.rl, ctx.dist
    world, rank, n = dist.world_size, dist.rank, len(trajs)
    budget = budget or rl.max_tokens_per_micro_batch
    lengths = _global_lengths(ctx, [len(t.prompt_ids) + len(t.response_ids) for t in trajs])
    n_mini = rl.prompts_per_step // rl.mini_batch_prompts
    groups_per_mini = max(1, math.ceil(n // rl.group_size / n_mini))
    owner, minis, per_rank = {}, [], [0] * world
    for local in mini_batches(n, rl.group_size, groups_per_mini):
        members = [r * n + i for r in range(world) for i in local]
        plan = plan_micro_batches([lengths[k] for k in members], world, budget)
        for r, micros in enumerate(plan):
            for micro in micros:
                for j in micro:
                    owner[members[j]] = r
                    per_rank[r] += lengths[members[j]]
        minis.append([[members[j] for j in micro] for micro in plan[rank]])
    mine = [Sample(list(t.prompt_ids), list(t.response_ids), list(t.loss_mask), float(a),
                   list(t.rollout_logprobs)) for t, a in zip(trajs, adv.tolist())]
    outgoing = [{} for _ in range(world)]
    for i, sample in enumerate(mine):
        outgoing[owner[rank * n + i]][rank * n + i] = sample
    mean = sum(per_rank) / world
    stats = {"micro_batches": sum(len(m) for m in minis),
             "rank_token_imbalance": max(per_rank) / mean if mean else 1.0}
    return StepPlan(exchange(ctx, outgoing), minis, n, stats)


def _global_lengths(ctx, local: list[int]) -> list[int]:
    """Every rank's trajectory lengths, rank-major (each rank holds as many)."""
    world, rank = ctx.dist.world_size, ctx.dist.rank
    block = torch.zeros(world, len(local), dtype=torch.float64)
    block[rank] = torch.tensor(local, dtype=torch.float64)
    return [int(v) for v in ctx.all_reduce_sum(block).reshape(-1).tolist()]


def exchange(ctx, outgoing: list[dict]) -> dict:
    """outgoing[r]: what this rank sends rank r ({key: picklable}); returns what it receives
    from every rank (its own share included), merged. One all_to_all of pickled bytes on CPU
    (the process group serves CPU tensors under every collective), sizes agreed first."""
    world, rank = ctx.dist.world_size, ctx.dist.rank
    if world == 1:
        return dict(outgoing[0])
    payloads = [pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL) if r != rank else b""
                for r, part in enumerate(outgoing)]
    sizes = torch.zeros(world, world, dtype=torch.int64)
    sizes[rank] = torch.tensor([len(p) for p in payloads], dtype=torch.int64)
    sizes = ctx.all_reduce_sum(sizes)
    send_sizes, recv_sizes = sizes[rank].tolist(), sizes[:, rank].tolist()
    blob = b"".join(payloads)
    send = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else \
        torch.empty(0, dtype=torch.uint8)
    recv = torch.empty(sum(recv_sizes), dtype=torch.uint8)
    tdist.all_to_all_single(recv, send, recv_sizes, send_sizes)
    out, offset, raw = dict(outgoing[rank]), 0, recv.numpy().tobytes()
    for size in recv_sizes:
        if size:
            out.update(pickle.loads(raw[offset:offset + size]))
        offset += size
    return out


def to_origin(ctx, plan: StepPlan, values: dict) -> list:
    """Per-key values computed where the plan trained them, returned to the ranks that
    generated them, in their local order (a collective)."""
    world, n = ctx.dist.world_size, plan.num_local
    outgoing = [{} for _ in range(world)]
    for key, value in values.items():
        outgoing[key // n][key] = value
    back = exchange(ctx, outgoing)
    start = ctx.dist.rank * n
    return [back[start + i] for i in range(n)]


def micro_batches(ctx, plan: StepPlan, keys_per_micro: list[list[int]]) -> list:
    """(keys, build) per micro batch; build() makes the MicroBatch on the device when its turn
    comes, packed unless rl.packing is false. A micro batch without keys (a rank with fewer
    trajectories than the agreed count) is one pad token: it still joins the collectives."""
    return [(keys, functools.partial(_build, ctx, plan, keys)) for keys in keys_per_micro]


def _build(ctx, plan: StepPlan, keys: list[int]):
    samples = [plan.samples[k] for k in keys]
    return build_micro_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                             [s.loss_mask for s in samples], ctx.tokenizer.pad_token_id or 0,
                             ctx.backend.device(), packed=ctx.cfg.rl.packing)

