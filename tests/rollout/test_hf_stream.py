"""rollout.hf_mode=continuous (HFStreamEngine): requests join one running decode batch between
steps, finished rows resolve at once, and each request samples what a batch of its own would
(seeded), with log-probs equal to the trainer's recompute, through the real agent loop too."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from aster.rollout.config import RolloutConfig
from aster.rollout.engine import SamplingParams
from aster.rollout.hf_engine import HFEngine
from aster.rollout.hf_stream import HFStreamEngine


@pytest.fixture(scope="module")
def engines(tiny_dir, one_thread):
    batched = HFEngine(tiny_dir, max_batch_size=8)
    stream = HFStreamEngine(batched.model, max_batch_size=8)  # the same module
    yield batched, stream
    stream.close()


def _prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 250, (n,), generator=gen).tolist() for n in lengths]


def test_staggered_requests_sample_what_their_own_batch_would(engines, monkeypatch):
    """Requests of different lengths arrive while others decode (the live cache is re-padded
    and joined); each one's tokens and log-probs are those of a batch of its own."""
    batched, stream = engines
    prompts = _prompts([5, 31, 12, 47, 3, 20])
    params = [SamplingParams(max_new_tokens=60 + 5 * i, temperature=1.0, seed=100 + i)
              for i in range(len(prompts))]
    joins, join = [], stream._joined

    def counted(live, live_width, new, new_width):
        joins.append((live_width, new_width))
        return join(live, live_width, new, new_width)

    monkeypatch.setattr(stream, "_joined", counted)

    futures = []
    for prompt, p in zip(prompts, params):  # each one sent once the one before is decoding
        futures.append(stream._submit(prompt, p))
        while not any(row.done is futures[-1] for row in list(stream._rows)):
            time.sleep(0.001)
    outs = [f.result(timeout=60) for f in futures]
    assert len(joins) == len(prompts) - 1, joins  # every later request joined a running batch
    assert any(a < b for a, b in joins) and any(a > b for a, b in joins)  # both sides padded
    for prompt, p, out in zip(prompts, params, outs):
        (alone,) = batched.generate([prompt], p)
        assert out.token_ids == alone.token_ids and out.finish_reason == alone.finish_reason
        assert max(abs(a - b) for a, b in zip(out.logprobs, alone.logprobs)) < 1e-4


def test_a_short_request_is_not_held_behind_a_long_one(engines):
    _, stream = engines
    long_prompt, short_prompt = _prompts([8, 8], seed=3)
    finished: list[str] = []

    async def race():
        async def one(name, prompt, tokens, delay):
            await asyncio.sleep(delay)
            await stream.agenerate(prompt, SamplingParams(max_new_tokens=tokens, seed=1))
            finished.append(name)

        await asyncio.gather(one("long", long_prompt, 400, 0.0),
                             one("short", short_prompt, 4, 0.05))

    start = time.perf_counter()
    asyncio.run(race())
    assert finished == ["short", "long"], time.perf_counter() - start


def test_stop_tokens_and_bad_input(engines):
    _, stream = engines
    (prompt,) = _prompts([6], seed=5)
    first = stream.generate([prompt], SamplingParams(max_new_tokens=3, seed=2))[0].token_ids[0]
    out = stream.generate([prompt], SamplingParams(max_new_tokens=30, seed=2,
                                                   stop_token_ids=[first]))[0]
    assert out.token_ids == [first] and out.finish_reason == "stop"
    with pytest.raises(ValueError, match="at least one token"):
        stream.generate([[]], SamplingParams())


def test_agent_loop_trajectories_match_the_trainer(tiny_dir, tokenizer, pool, one_thread):
    from transformers import AutoModelForCausalLM

    from aster.backend import select_backend
    from aster.rollout import run_rollouts
    from aster.rollout.factory import build_engine
    from tests.rollout.agreement import ToolInjectingEngine, check_trajectories

    engine = build_engine(select_backend("cpu"), tiny_dir, RolloutConfig(hf_mode="continuous",
                                                                          max_concurrency=8))
    assert isinstance(engine, HFStreamEngine) and engine.continuous_batching
    try:
        tools = ToolInjectingEngine(engine, tokenizer, think=10, calls=2)
        prompts = [{"prompt": f"What is {i} * 3 + 1?", "answer": "7"} for i in range(4)]
        cfg = RolloutConfig(max_response_tokens=512, max_tool_calls=4, max_concurrency=8)
        stats: dict = {}
        trajs = run_rollouts(tools, pool, prompts, cfg, tokenizer=tokenizer,
                             samples_per_prompt=2, seed=0, stats=stats)
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float32").eval()
    res = check_trajectories(trajs, model, tokenizer)
    assert res["problems"] == [] and res["finish_reasons"] == ["answer"]
    assert res["tool_calls"] == [2] * 8
    assert res["mean_abs_diff"] < 1e-4 and res["max_abs_diff"] < 1e-3
    assert stats["mean_batch"] > 1  # requests overlapped
