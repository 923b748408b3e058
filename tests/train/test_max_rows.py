"""data.max_rows limits the synthetic task as it limits a data file: the first N SFT rows, RL
prompts and eval prompts (before, the tiny default ignored it: a silent no-op)."""

from __future__ import annotations

from aster.config import load_config
from aster.train.pipeline import _prompts, _sft_examples


def _synthetic():
    call = {"role": "assistant", "content": "", "tool_calls": [{"code": "print(1)"}]}
    return {"sft": [{"messages": [call], "n": i} for i in range(5)],
            "rl": [{"problem": str(i), "answer": "1"} for i in range(6)],
            "eval": [{"problem": str(i), "answer": "1"} for i in range(7)]}


def test_max_rows_limits_the_synthetic_task():
    cfg = load_config(None, ["data.max_rows=2", "data.min_tool_calls=1"])
    data = _synthetic()
    assert [e["n"] for e in _sft_examples(cfg.data, data)] == [0, 1]
    assert [p["problem"] for p in _prompts("synthetic", cfg, data, "rl")] == ["0", "1"]
    assert len(_prompts("synthetic", cfg, data, "eval")) == 2
    unlimited = load_config(None, ["data.min_tool_calls=1"])
    assert len(_sft_examples(unlimited.data, data)) == 5
    assert len(_prompts("synthetic", unlimited, data, "rl")) == 6
