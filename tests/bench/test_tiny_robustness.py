"""bench/tiny_robustness.py's bookkeeping: the issue's targets per run and the grid's summary
(the runs themselves are `aster train`, which the slow end-to-end tests cover)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "tiny_robustness", Path(__file__).resolve().parents[2] / "bench" / "tiny_robustness.py")
robust = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(robust)


def row(sft, s1, s2, calls=(2.0, 2.0, 2.0), wall=300.0, **extra):
    out = {"model_seed": 0, "data_seed": 0, "threads": 1, "wall_s": wall, "rc": 0, **extra}
    for stage, acc, c in zip(robust.STAGES, (sft, s1, s2), calls):
        out[f"{stage}_acc"], out[f"{stage}_calls"] = acc, c
    return out


def test_targets_follow_the_issue():
    assert robust.targets(row(0.5, 0.7, 0.75)) == {
        "gain_20": True, "stage2_holds": True, "calls_80": True, "wall_10min": True}
    t = robust.targets(row(0.5, 0.8, 0.69, calls=(2.0, 1.5, 2.0), wall=700))
    assert t == {"gain_20": False, "stage2_holds": False, "calls_80": False, "wall_10min": False}
    failed = {"model_seed": 1, "data_seed": 0, "threads": 2, "wall_s": 3.0, "rc": 2,
              "error": "boom"}
    assert set(robust.targets(failed).values()) == {None}


def test_summary_is_median_and_range_over_finished_runs():
    rows = [row(0.3, 0.6, 0.7), row(0.5, 0.8, 0.9), row(0.4, 0.5, 0.55),
            {"model_seed": 9, "data_seed": 1, "threads": 1, "wall_s": 1.0, "rc": 1,
             "error": "x"}]
    s = robust.summarise(rows)
    assert s["runs"] == 4 and s["finished"] == 3
    assert s["sft_acc"] == {"median": 0.4, "min": 0.3, "max": 0.5}
    assert s["rl_stage2_acc"]["median"] == pytest.approx(0.7)
    assert s["targets_met"]["gain_20"] == 2  # 0.4 -> 0.55 is +15 points
    table = robust.format_table(rows, s)
    assert "failed: x" in table and "gain_20" in table
