"""The agent loop: token-in/token-out, masks, limits, finish reasons, sessions, metrics."""

from __future__ import annotations

import json

import pytest

from aster.rollout import (
    FINISH_REASONS,
    RolloutConfig,
    Trajectory,
    chat_format,
    rollout_metrics,
    run_rollouts,
)
from aster.rollout.chat import apply_template, prompt_messages
from aster.rollout.hf_engine import HFEngine
from tests.rollout.conftest import ScriptedEngine

PROBLEM = {"prompt": "What is 17 * 23 + 5?", "answer": "396"}


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


def _cfg(**kw) -> RolloutConfig:
    base = {"max_response_tokens": 2048, "max_tool_calls": 8, "max_concurrency": 16,
            "tool_timeout_s": 5.0}
    return RolloutConfig(**{**base, **kw})


def _run(tokenizer, pool, turns, cfg=None, prompts=(PROBLEM,), stats=None, **kw):
    engine = ScriptedEngine(tokenizer, turns, **kw)
    trajs = run_rollouts(engine, pool, list(prompts), cfg or _cfg(), tokenizer=tokenizer,
                         stats=stats)
    for t in trajs:
        assert len(t.response_ids) == len(t.loss_mask) == len(t.rollout_logprobs)
        assert t.finish_reason in FINISH_REASONS
    return trajs, engine


def test_token_in_token_out_matches_the_template(tokenizer, pool):
    turns = ["<think>\nLet me compute.\n</think>\n\n" + _call("x = 17 * 23\nprint(x)"),
             _call("print(x + 5)"),
             # a Qwen3 template renders a last turn without reasoning with an empty think block
             "<think>\n\n</think>\n\nSo the answer is \\boxed{396}."]
    (traj,), engine = _run(tokenizer, pool, turns)
    assert traj.finish_reason == "answer" and traj.reward == 1.0 and traj.answer == "396"
    assert traj.num_tool_calls == 2 and traj.tool_errors == 0 and traj.num_turns == 3
    # the whole sequence is exactly what the chat template renders for this conversation
    messages = [*prompt_messages(PROBLEM["prompt"]),
                {"role": "assistant", "content": turns[0]},
                {"role": "tool", "content": "391\n"},
                {"role": "assistant", "content": turns[1]}, {"role": "tool", "content": "396\n"},
                {"role": "assistant", "content": turns[2]}]
    expected = apply_template(tokenizer, messages)
    assert expected.endswith("<|im_end|>\n")
    expected_ids = tokenizer.encode(expected[:-1], add_special_tokens=False)  # no trailing \n
    assert traj.prompt_ids + traj.response_ids == expected_ids
    # the masks select exactly the sampled turns, token for token
    sampled = [i for i, m in zip(traj.response_ids, traj.loss_mask) if m]
    want = []
    for turn in turns:
        want += tokenizer.encode(turn, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert sampled == want
    assert all(lp == (-0.5 if m else 0.0) for lp, m in zip(traj.rollout_logprobs, traj.loss_mask))
    # every tool span is the template's tool turn for that output
    fmt = chat_format(tokenizer)
    tool_ids = [i for i, m in zip(traj.response_ids, traj.loss_mask) if not m]
    assert tool_ids == fmt.tool_ids(["391\n"]) + fmt.tool_ids(["396\n"])
    # the engine saw prompt + everything so far at each turn (never re-tokenised)
    for call in engine.calls:
        assert call == (traj.prompt_ids + traj.response_ids)[:len(call)]
    assert traj.text == tokenizer.decode(traj.response_ids)


def test_malformed_call_is_fed_back_and_counted(tokenizer, pool):
    bad = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": print(7)}}\n</tool_call>'
    (traj,), _ = _run(tokenizer, pool, [bad, _call("print(7)"), "\\boxed{7}"],
                      prompts=[{"prompt": "7?", "answer": "7"}])
    assert traj.tool_errors == 1 and traj.num_tool_calls == 1
    assert traj.finish_reason == "answer" and traj.reward == 1.0
    assert "Error: the tool call is not valid JSON" in traj.text
    assert "<tool_response>\n7\n\n</tool_response>" in traj.text
    assert rollout_metrics([traj])["tool_error_rate"] == 0.5


def test_repeated_parse_errors_end_the_trajectory(tokenizer, pool):
    (traj,), _ = _run(tokenizer, pool, ["<tool_call>\n{oops\n</tool_call>"],
                      cfg=_cfg(max_parse_errors=2))
    assert traj.finish_reason == "tool_parse_error" and traj.tool_errors == 2
    assert traj.num_tool_calls == 0 and traj.reward == 0.0


def test_max_tool_calls(tokenizer, pool):
    (traj,), _ = _run(tokenizer, pool, [_call("print(396)  # \\boxed{396}")],
                      cfg=_cfg(max_tool_calls=3))
    assert traj.finish_reason == "max_tool_calls" and traj.num_tool_calls == 3
    assert traj.truncated and traj.reward == 0.0


def test_no_tool_call_and_answer(tokenizer, pool):
    (traj,), _ = _run(tokenizer, pool, ["I am not sure."])
    assert traj.finish_reason == "no_tool_call" and traj.num_tool_calls == 0
    (traj,), _ = _run(tokenizer, pool, ["It is \\boxed{395}."])
    assert traj.finish_reason == "answer" and traj.reward == 0.0 and traj.answer == "395"


def test_length_counts_tool_tokens(tokenizer, pool):
    call = _call("print('ab' * 400)")
    call_len = len(tokenizer.encode(call)) + 1
    cfg = _cfg(max_response_tokens=call_len + 30, max_tool_output_chars=200)
    (traj,), _ = _run(tokenizer, pool, [call], cfg=cfg)
    # the tool turn would cross the budget: the trajectory stops there, truncated
    assert traj.finish_reason == "length" and traj.truncated
    assert len(traj.response_ids) == call_len and traj.num_tool_calls == 1
    # with room, the output comes back cut head+tail at max_tool_output_chars
    cfg = _cfg(max_response_tokens=call_len + 400, max_tool_output_chars=200)
    (traj,), _ = _run(tokenizer, pool, [call], cfg=cfg)
    assert "characters truncated" in traj.text
    assert traj.finish_reason == "length" and len(traj.response_ids) <= cfg.max_response_tokens


def test_length_while_generating(tokenizer, pool):
    (traj,), _ = _run(tokenizer, pool, ["word " * 200], cfg=_cfg(max_response_tokens=50))
    assert traj.finish_reason == "length" and len(traj.response_ids) == 50
    assert all(traj.loss_mask)


def test_tool_timeout_and_errors_reach_the_model(tokenizer, pool):
    turns = [_call("import time\ntime.sleep(30)"), _call("1/0"), "\\boxed{1}"]
    (traj,), _ = _run(tokenizer, pool, turns, cfg=_cfg(tool_timeout_s=1.0))
    assert traj.num_tool_calls == 2 and traj.exec_errors == 2
    assert "TimeoutError" in traj.text and "ZeroDivisionError" in traj.text
    assert traj.timing["tool_s"] >= 1.0


def test_sessions_are_per_trajectory_and_closed(tokenizer, pool):
    step = _call("try:\n    n\nexcept NameError:\n    n = 0\nn += 1\nprint(n)")
    stats = {}
    trajs, _ = _run(tokenizer, pool, [step, step, "\\boxed{2}"],
                    prompts=[{"prompt": f"p{i}", "answer": "2"} for i in range(6)], stats=stats)
    for t in trajs:  # each trajectory counted 1 then 2 in its own session
        assert "<tool_response>\n1\n\n</tool_response>" in t.text
        assert "<tool_response>\n2\n\n</tool_response>" in t.text
        assert t.reward == 1.0
    assert not pool._live  # every session was closed at the end of its trajectory
    # per-turn batching: 18 generate calls went to the engine in a few batches
    assert stats["num_batches"] <= 6 and stats["mean_batch"] >= 3
    assert 0 <= stats["overhead_frac"] < 1


def test_real_hf_engine_end_to_end(tiny_dir, tokenizer, pool, one_thread):
    engine = HFEngine(tiny_dir)
    cfg = _cfg(max_response_tokens=48, max_tool_calls=4)
    prompts = [{"prompt": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(3)]
    stats = {}
    trajs = run_rollouts(engine, pool, prompts, cfg, tokenizer=tokenizer, samples_per_prompt=2,
                         seed=1, stats=stats)
    assert [(t.prompt_index, t.sample_index) for t in trajs] == [(i, s) for i in range(3)
                                                                 for s in range(2)]
    for t in trajs:
        assert 0 < len(t.response_ids) <= cfg.max_response_tokens
        assert t.finish_reason in FINISH_REASONS
        sampled = [lp for lp, m in zip(t.rollout_logprobs, t.loss_mask) if m]
        assert sampled and all(lp <= 0 for lp in sampled)
        assert t.timing["gen_s"] > 0
    again = run_rollouts(engine, pool, prompts, cfg, tokenizer=tokenizer, samples_per_prompt=2,
                         seed=1)
    assert [t.response_ids for t in trajs] == [t.response_ids for t in again]  # seeded
    metrics = rollout_metrics(trajs, stats)
    assert metrics["response_len_max"] <= 48 and 0 <= metrics["overhead_frac"] < 1
    assert abs(sum(metrics[f"finish_{r}"] for r in FINISH_REASONS) - 1) < 1e-9


def test_rollout_metrics_numbers():
    trajs = [Trajectory(prompt_ids=[1], response_ids=[1] * n, loss_mask=[1] * n,
                        rollout_logprobs=[0.0] * n, num_tool_calls=c, finish_reason=r,
                        reward=w)
             for n, c, r, w in [(10, 0, "answer", 1.0), (20, 2, "length", 0.0),
                                (30, 4, "answer", 1.0), (40, 10, "max_tool_calls", 0.0)]]
    m = rollout_metrics(trajs)
    assert m["tool_calls_mean"] == 4.0 and m["tool_calls_max"] == 10.0
    assert m["tool_calls_p50"] == 3.0
    assert m["response_len_mean"] == 25.0
    assert m["finish_answer"] == 0.5 and m["finish_length"] == 0.25
    assert m["reward_mean"] == 0.5


@pytest.mark.parametrize("bad", [3, {"answer": "1"}])
def test_bad_prompt_is_a_clear_error(tokenizer, pool, bad):
    with pytest.raises(ValueError, match="rollout prompt"):
        _run(tokenizer, pool, ["x"], prompts=[bad])
