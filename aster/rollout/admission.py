"""KVAdmission: how many trajectories a rollout keeps in flight.

`rollout.max_concurrency` caps it. Beyond that, a multi-turn trajectory's context lives in the
engine's KV cache only while it decodes; during its tool call its blocks are free, and vLLM's
prefix cache keeps them only until another sequence needs the room (LRU eviction of freed
blocks). With more live contexts than the cache holds, a returning turn mostly finds its prefix
evicted and prefills it again. The rollout scale harness measured that at the paper's stage-2
shape on one H100 (docs/rollouts-scale.md): 128 trajectories in flight against a cache of about
23 full contexts re-prefilled 16.3M tokens to decode 1.8M, 1.33x the ideal rollout time; 28-32
in flight, 1.20-1.24x with 88-93% of decode slots busy.

So, with `rollout.kv_admission` on and an engine that reports its KV size (`capacity
["kv_tokens"]`: vLLM in-process and the stand-in engine; not the hf engine, whose cache grows
with the batch), a trajectory starts only while the live trajectories' expected contexts fit:
at any moment a live trajectory is on average half-way through its growth, so N in flight hold
about N x (mean final context) / 2 tokens. The mean final context (prompt + response, tool
outputs included) is a running mean over the trajectories this rollout finished, with a prior
of PRIOR_WEIGHT trajectories at the full budget (mean prompt + response budget): the first ones
are admitted conservatively, and the few short trajectories that finish first do not open the
gate at once. At least one is always in flight.
"""

from __future__ import annotations

import asyncio
import contextlib

PRIOR_WEIGHT = 8


class KVAdmission:
    """An asyncio gate: `async with gate.slot() as done:` ... `done(final_context_tokens)`."""

    def __init__(self, max_concurrency: int, kv_tokens: int | None, budget_tokens: int):
        self.max_concurrency = max_concurrency
        self.kv_tokens = kv_tokens or None
        self._finished, self._final_sum = PRIOR_WEIGHT, PRIOR_WEIGHT * max(1, budget_tokens)
        self.live = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    def mean_final_context(self) -> float:
        return self._final_sum / self._finished

    def limit(self) -> int:
        """Trajectories allowed in flight now."""
        if self.kv_tokens is None:
            return self.max_concurrency
        fits = int(2 * self.kv_tokens // max(1.0, self.mean_final_context()))
        return max(1, min(self.max_concurrency, fits))

    @contextlib.asynccontextmanager
    async def slot(self):
        """Wait for room, hold it for one trajectory; the body reports the trajectory's final
        context through the callable it receives (a trajectory that fails reports nothing)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.live < self.limit())
            self.live += 1
            self.peak = max(self.peak, self.live)
        final: list[int] = []
        try:
            yield final.append
        finally:
            async with self._cond:
                self.live -= 1
                if final:
                    self._finished += 1
                    self._final_sum += final[-1]
                self._cond.notify_all()
