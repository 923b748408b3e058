"""The tool environment's keys: calls per turn, what a malformed call does, output not cut,
and the sandbox prelude (names every session starts with)."""

from __future__ import annotations

import json

import pytest

from aster.errors import ConfigError
from aster.rollout import RolloutConfig, run_rollouts
from aster.sandbox import SandboxConfig, SandboxPool
from tests.rollout.conftest import ScriptedEngine

PROBLEM = {"prompt": "What is 17 * 23 + 5?", "answer": "396"}
BAD = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": print(7)}}\n</tool_call>'


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


def _run(tokenizer, pool, turns, **kw):
    cfg = RolloutConfig(**{"max_response_tokens": 2048, "max_tool_calls": 8,
                           "max_concurrency": 4, "tool_timeout_s": 5.0, **kw})
    (traj,) = run_rollouts(ScriptedEngine(tokenizer, turns), pool, [PROBLEM], cfg,
                           tokenizer=tokenizer)
    return traj


def test_only_the_first_call_of_a_turn_runs(tokenizer, pool):
    two = _call("x = 391\nprint('first')") + "\n" + _call("print('second')")
    turns = [two, _call("print(x + 5)"), "\\boxed{396}"]
    traj = _run(tokenizer, pool, turns, max_calls_per_turn=1)
    assert traj.num_tool_calls == 2 and traj.reward == 1.0
    assert "first" in traj.text and "<tool_response>\nsecond" not in traj.text
    assert traj.text.count("<tool_response>") == 2
    every = _run(tokenizer, pool, turns, max_calls_per_turn=0)
    assert every.num_tool_calls == 3 and every.text.count("<tool_response>") == 3


def test_malformed_call_ends_the_trajectory_under_end(tokenizer, pool):
    traj = _run(tokenizer, pool, [BAD, _call("print(7)"), "\\boxed{7}"], on_parse_error="end")
    assert traj.finish_reason == "tool_parse_error" and traj.num_turns == 1
    assert traj.tool_errors == 1 and traj.num_tool_calls == 0
    assert "<tool_response>" not in traj.text  # never answered: the trajectory stopped
    retry = _run(tokenizer, pool, [BAD, _call("print(7)"), "\\boxed{7}"],
                 on_parse_error="retry")
    assert retry.finish_reason == "answer" and retry.num_tool_calls == 1


def test_end_drops_a_malformed_call_beside_a_good_one(tokenizer, pool):
    # verl's hermes parser skips a call it cannot decode and runs the others
    traj = _run(tokenizer, pool, [BAD + "\n" + _call("print(396)"), "\\boxed{396}"],
                on_parse_error="end", max_calls_per_turn=1)
    assert traj.finish_reason == "answer" and traj.num_tool_calls == 1
    assert traj.tool_errors == 1 and "not valid JSON" not in traj.text


def test_output_not_cut_when_the_limit_is_zero(tokenizer, pool):
    call = _call("print('ab' * 3000)")
    cut = _run(tokenizer, pool, [call, "\\boxed{1}"], max_response_tokens=20000,
               max_tool_output_chars=200)
    assert "characters truncated" in cut.text
    whole = _run(tokenizer, pool, [call, "\\boxed{1}"], max_response_tokens=20000,
                 max_tool_output_chars=0)
    assert "ab" * 3000 in whole.text and "truncated" not in whole.text


def test_strict_box_reward_is_the_reproductions(tokenizer, pool):
    from aster.reward import score

    # the reproduction: the boxed text in the last 100 characters, compared as a string
    assert _run(tokenizer, pool, ["So \\boxed{396}."], reward_match="strict_box").reward == 1.0
    assert _run(tokenizer, pool, ["So \\boxed{0396}."], reward_match="strict_box").reward == 0.0
    assert _run(tokenizer, pool, ["So \\boxed{0396}."]).reward == 1.0  # math_verify: equal
    late = "\\boxed{396}" + " and that is all." * 8
    assert score(late, "396", match="strict_box") == 0.0 and score(late, "396") == 1.0
    assert score("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", match="strict_box") == 1.0


@pytest.mark.parametrize("key,value", [("max_calls_per_turn", -1), ("on_parse_error", "skip"),
                                       ("max_tool_output_chars", -5)])
def test_bad_keys_are_one_line_errors(key, value):
    with pytest.raises(ValueError, match=f"rollout.{key}"):
        RolloutConfig(**{key: value})


PRELUDE = "import sympy as sp\nimport math, sympy, itertools"


def test_prelude_binds_names_that_persist_and_survive_a_restart():
    cfg = SandboxConfig(prelude=PRELUDE, preload=["math", "sympy"], timeout_s=2.0,
                        max_sessions=2, spare_workers=1)
    with SandboxPool(cfg) as pool, pool.session() as s:
        r = s.run("print(sp.Integer(3) + math.pi)")
        assert r.ok and r.output == "6.14159265358979\n", r
        assert s.run("list(itertools.islice(itertools.count(), 3)), sympy.__name__").output \
            == "([0, 1, 2], 'sympy')\n"
        r = s.run("1/0")
        assert 'File "<cell-3>"' in r.output  # the prelude takes no cell number
        r = s.run("import time\nwhile True: time.sleep(0.01)", timeout=0.5)
        if r.state_reset:  # a fresh interpreter runs the prelude again
            assert s.run("print(sp.Integer(2))").output == "2\n"
    with SandboxPool(SandboxConfig(preload=["math"])) as pool, pool.session() as s:
        assert "NameError" in s.run("print(sp.Integer(3) + math.pi)").output


def test_a_failing_prelude_is_a_config_error_at_pool_start():
    with pytest.raises(ConfigError, match=r"sandbox.prelude fails: .*No module named "):
        SandboxPool(SandboxConfig(prelude="import sympy_does_not_exist as sp", preload=[]))
    with pytest.raises(ConfigError, match="ZeroDivisionError"):
        SandboxPool(SandboxConfig(prelude="x = 1/0", preload=[]))
    with pytest.raises(ValueError, match="sandbox.prelude"):
        SandboxConfig(prelude=["import math"])
