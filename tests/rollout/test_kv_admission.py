"""rollout.kv_admission: a rollout keeps no more trajectories in flight than the engine's KV
cache holds at their running mean context (aster/rollout/admission.py), through the real agent
loop on the stand-in engine that reports its KV size as vLLM does."""

from __future__ import annotations

import asyncio

import pytest

from aster.rollout import AgentLoop, RolloutConfig
from aster.rollout.admission import PRIOR_WEIGHT, KVAdmission
from aster.rollout.sim_engine import SimEngine

FAST = 1e7  # model seconds per wall second: the stand-in never waits on the clock


def test_the_limit_follows_the_kv_cache_and_the_running_mean():
    gate = KVAdmission(max_concurrency=64, kv_tokens=100_000, budget_tokens=10_000)
    assert gate.limit() == 20  # 2 x 100,000 / 10,000: a live context is half-way on average
    for _ in range(PRIOR_WEIGHT):  # as many finish at 2,000 tokens as the prior weighs
        gate._finished += 1
        gate._final_sum += 2_000
    assert gate.mean_final_context() == 6_000 and gate.limit() == 33
    assert KVAdmission(64, None, 10_000).limit() == 64  # no KV figure: max_concurrency only
    assert KVAdmission(8, 10**9, 10_000).limit() == 8
    assert KVAdmission(64, 1_000, 10**6).limit() == 1  # never below one


def test_the_gate_never_lets_more_than_its_limit_in():
    async def main():
        gate = KVAdmission(max_concurrency=100, kv_tokens=50_000, budget_tokens=10_000)
        live, peak = 0, 0

        async def one():
            nonlocal live, peak
            async with gate.slot() as done:
                live += 1
                peak = max(peak, live)
                await asyncio.sleep(0.001)
                live -= 1
                done(10_000)  # as long as the prior: the limit stays 10

        await asyncio.gather(*(one() for _ in range(40)))
        return peak, gate.peak

    peak, recorded = asyncio.run(main())
    assert peak == recorded == 10


def _answer_script(tokenizer, n_filler: int):
    filler = tokenizer.encode(" ok" * n_filler, add_special_tokens=False)
    tail = tokenizer.encode("\n</think>\n\n\\boxed{7}", add_special_tokens=False)
    return lambda prompt: filler + tail + [tokenizer.eos_token_id]


@pytest.mark.parametrize("kv_admission", [True, False])
def test_the_agent_loop_admits_what_the_kv_cache_holds(tokenizer, pool, kv_admission):
    engine = SimEngine(_answer_script(tokenizer, 300), kv_tokens=8192, time_scale=FAST)
    cfg = RolloutConfig(max_response_tokens=2000, max_concurrency=32,
                        kv_admission=kv_admission)
    loop = AgentLoop(engine, tokenizer, pool, cfg, seed=0)
    prompts = [{"prompt": f"What is {i} + 0?", "answer": "7"} for i in range(4)]
    try:
        trajs = loop.run(prompts, samples_per_prompt=8)
    finally:
        engine.close()
    assert len(trajs) == 32 and all(t.reward == 1.0 for t in trajs)  # every one scored
    peak = loop.stats["peak_in_flight"]
    if not kv_admission:
        assert peak == 32
        return
    final = min(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    # never more than twice the KV over the smallest final context (the mean is above it)...
    assert 1 <= peak <= 2 * 8192 // final
    # ...and well under what max_concurrency alone would have let in
    assert peak < 32
