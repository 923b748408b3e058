"""The sandbox pool never starves the agent loop: trajectories waiting for a session hold no
thread the sessions' calls need, and no sandbox condition ends the whole rollout (issue 22)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from aster.config import load_config
from aster.errors import ConfigError
from aster.rollout import RolloutConfig, rollout_metrics, run_rollouts
from aster.sandbox import SandboxConfig, SandboxPool
from tests.rollout.conftest import ScriptedEngine


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


# four trivial calls that need the session's state (x) to give the right output, then the answer
TURNS = [_call("x = 1"), _call("x += 1"), _call("x *= 3"), _call("print(x + 1)"),
         "The tool says 7, so the answer is \\boxed{7}."]


def _prompts(n: int) -> list[dict]:
    return [{"prompt": f"Problem {i}: what is (1 + 1) * 3 + 1?", "answer": "7"} for i in range(n)]


def _check_all_scored(trajs, n: int) -> None:
    assert len(trajs) == n
    reasons = {t.finish_reason for t in trajs}
    assert reasons == {"answer"}, reasons
    assert all(t.num_tool_calls == 4 and t.exec_errors == 0 and t.reward == 1.0 for t in trajs)
    assert all("7" in t.text for t in trajs)  # the last call's output reached the model


def test_two_sessions_serve_eight_tool_using_trajectories(tokenizer):
    """Before: the 6 waiting opens sat in the pool's 2 threads, the 2 holders' calls queued
    behind them, and after acquire_timeout_s SandboxBusyError ended the whole rollout."""
    cfg = RolloutConfig(max_response_tokens=2048, max_tool_calls=8, max_concurrency=8,
                        tool_timeout_s=5.0)
    sandbox = SandboxConfig(max_sessions=2, spare_workers=1, preload=["math"], timeout_s=5.0,
                            acquire_timeout_s=20.0)
    with SandboxPool(sandbox) as pool:
        trajs = run_rollouts(ScriptedEngine(tokenizer, TURNS), pool, _prompts(8), cfg,
                             tokenizer=tokenizer)
        with pool.session() as s:  # both slots were given back
            with pool.session() as t:
                assert s.run("1 + 1").output == "2\n" and t.run("2").ok
    _check_all_scored(trajs, 8)


def test_shipped_qwen3_4b_settings_serve_256_trajectories_with_4_calls_each(tokenizer):
    """The shipped qwen3-4b rollout and sandbox sections (max_concurrency 256); the acquire
    timeout is shortened only so that a starving pool fails in seconds, not 300 s."""
    cfg = load_config("qwen3-4b")
    rollout = replace(cfg.rollout, tool_timeout_s=10.0)
    sandbox = replace(cfg.sandbox, acquire_timeout_s=30.0)
    assert rollout.max_concurrency == 256 and sandbox.max_sessions >= 256
    with SandboxPool(sandbox) as pool:
        trajs = run_rollouts(ScriptedEngine(tokenizer, TURNS), pool, _prompts(256), rollout,
                             tokenizer=tokenizer)
    _check_all_scored(trajs, 256)


def test_a_trajectory_without_a_session_ends_alone_with_its_own_reason(tokenizer):
    """One session held outside the loop and a short acquire timeout: every trajectory of the
    rollout ends sandbox_unavailable (counted), none raises out of run_rollouts."""
    cfg = RolloutConfig(max_response_tokens=2048, max_tool_calls=8, max_concurrency=4)
    sandbox = SandboxConfig(max_sessions=1, spare_workers=0, preload=["math"],
                            acquire_timeout_s=0.3)
    with SandboxPool(sandbox) as pool, pool.session():
        trajs = run_rollouts(ScriptedEngine(tokenizer, TURNS), pool, _prompts(4), cfg,
                             tokenizer=tokenizer)
    assert [t.finish_reason for t in trajs] == ["sandbox_unavailable"] * 4
    assert all(t.reward == 0.0 and t.num_tool_calls == 0 for t in trajs)
    assert rollout_metrics(trajs)["finish_sandbox_unavailable"] == 1.0


def test_fewer_sessions_than_trajectories_in_flight_is_a_config_error():
    with pytest.raises(ConfigError, match=r"sandbox\.max_sessions=64 .*rollout\.max_concurrency"
                                          r"=256"):
        load_config("qwen3-4b", ["sandbox.max_sessions=64"])
    load_config("qwen3-4b", ["sandbox.max_sessions=64", "rollout.max_concurrency=64"])
