"""The stand-in engine's scheduling rules (vLLM 0.32 v1): KV budget, preemption by recompute,
prefix-cache hits and evictions, max_num_seqs, chunked prefill, step-time accounting."""

from __future__ import annotations

import asyncio

import pytest

import aster.rollout.sim_engine as sim
from aster.rollout.engine import SamplingParams
from aster.rollout.sim_engine import SimEngine
from aster.rollout.sim_kv import BlockPool, StepModel

EOS = 0
FAST = 1e7  # model seconds per wall second: the tests never wait on the clock


def _script(n_out: int):
    """Every request samples n_out tokens (distinct per prompt, so blocks never collide),
    the last one the stop token."""
    def script(prompt):
        base = 1000 + (sum(prompt) * 7919 + len(prompt)) % 100_000
        return [base + i for i in range(n_out - 1)] + [EOS]
    return script


def _params(n=10_000):
    return SamplingParams(max_new_tokens=n, stop_token_ids=[EOS])


def _engine(n_out=8, **kw):
    kw.setdefault("kv_tokens", 4096)
    return SimEngine(_script(n_out), time_scale=FAST, **kw)


def _prompt(seed: int, n: int) -> list[int]:
    return [10 + (seed * 131 + i * 17) % 900 for i in range(n)]


def test_outputs_follow_the_script_and_the_stop_and_length_limits():
    engine = _engine(n_out=20)
    try:
        prompts = [_prompt(i, 30) for i in range(3)]
        outs = engine.generate(prompts, _params())
        for prompt, out in zip(prompts, outs):
            assert out.token_ids == _script(20)(prompt) and out.finish_reason == "stop"
            assert len(out.logprobs) == 20
        (cut,) = engine.generate([_prompt(9, 30)], SamplingParams(max_new_tokens=5))
        assert len(cut.token_ids) == 5 and cut.finish_reason == "length"
    finally:
        engine.close()


def test_kv_budget_and_preemption_by_recompute():
    # 16 blocks of 16 tokens; two requests of 16 + 200 tokens cannot both hold their KV
    engine = _engine(n_out=200, kv_tokens=256)
    try:
        prompts = [_prompt(1, 16), _prompt(2, 16)]
        outs = engine.generate(prompts, _params())
        s = engine.stats
        assert [o.token_ids for o in outs] == [_script(200)(p) for p in prompts]
        assert s["peak_blocks"] <= 16
        assert s["preemptions"] >= 1 and s["recompute_tokens"] > 0
        # every sampled token came from one decode or prefill pass; recompute re-ran prompts
        assert s["prefill_tokens"] > 32
    finally:
        engine.close()


def test_requests_wait_for_blocks_instead_of_overcommitting():
    engine = _engine(n_out=40, kv_tokens=512)  # 32 blocks; a request needs 4, then 6
    try:
        prompts = [_prompt(i, 50) for i in range(12)]
        outs = engine.generate(prompts, _params())
        assert [o.token_ids for o in outs] == [_script(40)(p) for p in prompts]
        assert engine.stats["peak_blocks"] <= 32
        # admitted on the blocks their prompt needs now (as vLLM), preempted as they grow
        assert engine.stats["peak_running"] == 32 // 4
        assert engine.stats["preemptions"] >= 1
    finally:
        engine.close()


def test_max_num_seqs_bounds_the_running_batch():
    engine = _engine(n_out=30, max_num_seqs=3)
    try:
        engine.generate([_prompt(i, 20) for i in range(10)], _params())
        assert engine.stats["peak_running"] == 3
    finally:
        engine.close()


def test_prefix_hit_takes_the_cached_blocks_of_the_previous_turn():
    engine = _engine(n_out=25)
    try:
        prompt = _prompt(3, 40)
        (first,) = engine.generate([prompt], _params())
        hits0 = engine.stats["prefix_hit_tokens"]
        follow = prompt + first.token_ids + [5, 6, 7]
        engine.generate([follow], _params())
        # the first request computed its prompt and all but its last sampled token
        computed = len(prompt) + len(first.token_ids) - 1
        assert engine.stats["prefix_hit_tokens"] - hits0 == computed // 16 * 16
        assert engine.stats["reprefill_tokens"] == 0
    finally:
        engine.close()


def test_evicted_prefix_is_re_prefilled_and_counted():
    engine = _engine(n_out=10, kv_tokens=256)  # 16 blocks
    try:
        prompt = _prompt(4, 100)
        (first,) = engine.generate([prompt], _params())
        engine.generate([_prompt(5, 200)], _params())  # needs 14 blocks: evicts the first
        follow = prompt + first.token_ids + [5, 6]
        engine.generate([follow], _params())
        s = engine.stats
        computed_before = (len(prompt) + len(first.token_ids) - 1) // 16 * 16
        assert s["reprefill_tokens"] >= computed_before - 16 * 2  # most of it came back
        assert s["reprefill_tokens"] > 0 and engine.pool.evictions > 0
    finally:
        engine.close()


def test_chunked_prefill_respects_the_token_budget():
    engine = _engine(n_out=2, max_num_batched_tokens=32)
    try:
        engine.generate([_prompt(6, 100)], _params())
        # 100 prompt tokens in chunks of 32: 4 prefill steps, then one decode step
        assert engine.stats["steps"] == 5
        assert engine.stats["prefill_tokens"] == 100 and engine.stats["decode_tokens"] == 1
    finally:
        engine.close()


def test_decode_spans_account_exactly_like_single_steps(monkeypatch):
    """The span fast path must give the same steps, tokens, contexts and model time."""
    def run():
        engine = _engine(n_out=300, kv_tokens=2048)
        try:
            engine.generate([_prompt(i, 40 + 13 * i) for i in range(5)], _params())
            return dict(engine.stats)
        finally:
            engine.close()

    spans = run()
    monkeypatch.setattr(sim, "MAX_SPAN_STEPS", 1)
    steps = run()
    for key in ("steps", "decode_tokens", "decode_context", "prefill_tokens", "preemptions"):
        assert spans[key] == steps[key], key
    assert spans["busy_s"] == pytest.approx(steps["busy_s"], rel=1e-9)


def test_step_time_of_one_request_matches_the_roofline():
    model = StepModel()
    engine = SimEngine(_script(50), kv_tokens=4096, time_scale=FAST, step_model=model)
    try:
        engine.generate([_prompt(7, 64)], _params())
    finally:
        engine.close()
    prefill = model.step_s(64, 64, 1, 64 * 65 / 2)
    decode = sum(model.decode_step_s(64 + j + 1) for j in range(49))
    assert engine.stats["busy_s"] == pytest.approx(prefill + decode, rel=1e-9)


def test_step_model_numbers():
    m = StepModel()
    # one H100 SXM at 80% of 3.35 TB/s reads Qwen3-4B's 8.04 GB of bf16 weights in 3.0 ms
    assert m.decode_step_s(1) == pytest.approx(8.04e9 / (3.35e12 * 0.8), rel=1e-3)
    # a 16K-token context adds 16384 x 147,456 bytes
    assert m.decode_step_s(16384) - m.decode_step_s(0) == pytest.approx(
        16384 * 147_456 / (3.35e12 * 0.8), rel=1e-3)
    # a 4096-token prefill chunk is compute bound
    assert m.step_s(4096, 4096, 1, 4096 * 4097 / 2) > m.memory_s(4096)
    with pytest.raises(ValueError, match="mfu"):
        StepModel(mfu=0.0)


def test_continuous_requests_join_the_running_batch():
    engine = _engine(n_out=12)

    async def main():
        return await asyncio.gather(*(engine.agenerate(_prompt(i, 24), _params())
                                      for i in range(6)))
    try:
        outs = asyncio.run(main())
        assert [o.token_ids for o in outs] == [_script(12)(_prompt(i, 24)) for i in range(6)]
        assert engine.stats["peak_running"] == 6
    finally:
        engine.close()


def test_a_request_that_can_never_fit_is_refused_in_one_line():
    engine = _engine(n_out=10, kv_tokens=64)
    try:
        with pytest.raises(ValueError, match="can never fit the KV cache"):
            engine.generate([_prompt(8, 100)], _params())
    finally:
        engine.close()


def test_block_pool_evicts_least_recently_freed_and_tail_first():
    pool = BlockPool(4)
    a = pool.allocate(2)
    for i, block in enumerate(a):
        pool.cache(block, 100 + i)
    pool.release(a)  # tail first: block of hash 101 is now ahead of 100
    assert pool.num_free == 4
    (taken,) = pool.allocate(1)  # a never-used block goes first (it was freed earliest)
    assert taken.hash is None and pool.lookup([100, 101], 2) == a
    pool.allocate(2)  # the other never-used block, then the freed tail (hash 101)
    assert pool.evictions == 1 and pool.lookup([100, 101], 2) == [a[0]]
    pool.touch([a[0]])  # a prefix hit takes a cached block back out of the free queue
    assert pool.num_free == 0 and a[0].ref == 1


def _harness():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "rollout_scale.py"
    spec = importlib.util.spec_from_file_location("rollout_scale", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout_scale"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["new", "barrier"])
def test_harness_turns_run_through_the_real_agent_loop_and_sandbox(tokenizer, pool, mode):
    """The scripted turns parse as real tool calls, run in real sessions, and every
    trajectory ends answered after exactly its drawn number of calls (both modes)."""
    harness = _harness()
    shape = harness.Shape("tiny", 6000, turn_median=120.0, calls_median=3.0, max_calls=6,
                          tool_median_s=0.05)
    setup = harness.Setup(shape, 8, scale=1e4, group=4, kv_tokens=8192)
    result = harness.run_mode(setup, mode, tokenizer, pool)
    plans = harness.draw_plans(shape, 8, setup.seed)
    assert result["finish"] == {"answer": 8} and result["scored"] == 8
    assert result["tool_calls"] == sum(len(p.tool_s) for p in plans)
    assert result["decode_tokens"] > 0 and result["prefix_hit_tokens"] > 0
    assert result["ideal_s"] > 0 and 0 < result["slot_util"] <= 1.0


def test_a_waiting_request_is_admitted_only_if_its_whole_prompt_fits():
    """vLLM 0.32's scheduler_reserve_full_isl: a first chunk that fits is not enough."""
    engine = _engine(n_out=20, kv_tokens=256, max_num_batched_tokens=32)  # 16 blocks
    try:
        # the first holds 10-11 blocks while it runs; the second needs 7 (its first chunk: 2)
        outs = engine.generate([_prompt(10, 150), _prompt(11, 100)], _params())
        assert all(o.finish_reason == "stop" for o in outs)
        assert engine.stats["peak_running"] == 1 and engine.stats["preemptions"] == 0
    finally:
        engine.close()


def test_a_failure_or_stall_inside_the_engine_fails_the_callers_instead_of_hanging(monkeypatch):
    def boom():
        raise RuntimeError("boom")

    for patch, message in ((boom, "boom"), (lambda: [], "stalled")):
        engine = _engine()
        monkeypatch.setattr(engine, "_schedule", patch)
        try:
            with pytest.raises(RuntimeError, match=message):
                engine.generate([_prompt(1, 20)], _params())
            with pytest.raises(RuntimeError, match="closed"):
                engine.generate([_prompt(2, 20)], _params())
        finally:
            engine.close()
