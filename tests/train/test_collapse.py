"""The interaction-collapse warnings: per RL step on rollouts, and per stage on held-out eval."""

from __future__ import annotations

import logging

import pytest

from aster.metrics import CollapseMonitor, held_out_collapse
from aster.train.config import CollapseMonitorConfig, RLConfig


def _run(monitor, calls, rewards):
    return [monitor.update(c, r) for c, r in zip(calls, rewards)]


def test_step_monitor_fires_when_tool_calls_fall_and_reward_is_flat(caplog):
    cfg = CollapseMonitorConfig(early_steps=2, window=2, min_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="aster"):
        out = _run(CollapseMonitor(cfg), [2.0, 2.2, 1.5, 0.9, 0.7], [0.3, 0.3, 0.3, 0.2, 0.1])
    # the recent window's mean: 1.2 at step 4 (above 50% of 2.1), 0.8 at step 5
    assert [o["collapse_warning"] for o in out] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert out[-1]["tool_calls_early"] == pytest.approx(2.1)
    assert out[-1]["tool_calls_recent"] == pytest.approx(0.8)
    assert "interaction collapse" in caplog.text


def test_step_monitor_stays_quiet_when_reward_rises_or_it_is_off():
    cfg = CollapseMonitorConfig(early_steps=2, window=2, min_fraction=0.5)
    rising = _run(CollapseMonitor(cfg), [2.0, 2.0, 0.8, 0.6], [0.1, 0.2, 0.5, 0.9])
    assert all(o["collapse_warning"] == 0.0 for o in rising)  # fewer calls, better answers
    off = CollapseMonitorConfig(enabled=False, early_steps=2, window=2)
    assert all(o["collapse_warning"] == 0.0
               for o in _run(CollapseMonitor(off), [2.0, 2.0, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0]))


def test_held_out_collapse_compares_an_rl_stage_with_sft():
    sft = {"accuracy": 0.305, "tool_calls_mean": 1.98}
    # measured: a stage-2 update turned a partly trained tiny model into early answers
    warning = held_out_collapse(sft, {"accuracy": 0.086, "tool_calls_mean": 1.37}, 0.8)
    assert warning and "69% of after SFT" in warning and "30.5% -> 8.6%" in warning
    assert held_out_collapse(sft, {"accuracy": 0.52, "tool_calls_mean": 2.41}, 0.8) is None
    # fewer calls but better answers is not a collapse
    assert held_out_collapse(sft, {"accuracy": 0.6, "tool_calls_mean": 1.0}, 0.8) is None
    assert held_out_collapse({"accuracy": 0.2, "tool_calls_mean": 0.0},
                             {"accuracy": 0.1, "tool_calls_mean": 0.0}, 0.8) is None


def test_pipeline_logs_the_held_out_warning_after_rl_stages_only(caplog):
    from aster.config import AsterConfig
    from aster.train.pipeline import _warn_held_out_collapse

    cfg = AsterConfig()
    done = {"sft": {"accuracy": 0.5, "tool_calls_mean": 2.0}}
    bad = {"accuracy": 0.4, "tool_calls_mean": 1.0}
    with caplog.at_level(logging.WARNING, logger="aster"):
        _warn_held_out_collapse(cfg.rl.collapse_monitor, done, "sft", bad)
        assert not caplog.text
        _warn_held_out_collapse(cfg.rl.collapse_monitor, done, "rl_stage2", bad)
    assert "after rl_stage2: interaction collapse on held-out problems" in caplog.text


def test_collapse_fractions_are_checked():
    with pytest.raises(ValueError, match="eval_min_fraction"):
        CollapseMonitorConfig(eval_min_fraction=1.5)
    with pytest.raises(ValueError, match="window"):
        RLConfig(collapse_monitor=CollapseMonitorConfig(window=0))
