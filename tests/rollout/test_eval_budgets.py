"""eval.budgets: one generation at the largest budget, every smaller budget scored by cutting
each trajectory where it ends; the cut must equal a separate run at that budget."""

from __future__ import annotations

import json

import pytest

from aster.eval import EvalConfig, evaluate, format_table, write_results
from aster.rollout import RolloutConfig
from aster.rollout.hf_engine import HFEngine
from tests.rollout.conftest import ScriptedEngine

KEYS = ("finish_reason", "response_tokens", "text", "prediction", "score", "tool_calls",
        "tool_errors")


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


def _by_sample(rows, budget):
    return {(r["benchmark"], r["index"], r["sample"]): {k: r[k] for k in KEYS}
            for r in rows if r["budget"] == budget}


def _check_cuts_equal_runs(engine, pool, tokenizer, prompts, budgets, k, rollout):
    cfg = EvalConfig(k=k, temperature=1.0, top_p=1.0, max_tool_calls=8, budgets=budgets,
                     max_tokens=max(budgets),  # the budget generated at
                     pass_k=[1])
    summary, rows = evaluate(engine, pool, {"b": prompts}, cfg, tokenizer, rollout_cfg=rollout)
    assert sorted(summary["budgets"]) == sorted(str(b) for b in budgets)
    reasons = set()
    for budget in budgets:
        one = EvalConfig(k=k, temperature=1.0, top_p=1.0, max_tool_calls=8, max_tokens=budget,
                         pass_k=[1])
        _, alone = evaluate(engine, pool, {"b": prompts}, one, tokenizer, rollout_cfg=rollout)
        assert _by_sample(rows, budget) == _by_sample(alone, alone[0]["budget"]), budget
        assert summary["budgets"][str(budget)]["benchmarks"]["b"]["accuracy"] == \
            _mean(r["score"] for r in alone)
        reasons |= {r["finish_reason"] for r in alone}
    return summary, rows, reasons


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.usefixtures("one_thread")
def test_cut_equals_a_separate_run_on_the_tiny_model(tiny_dir, tokenizer, pool):
    # the hf engine at temperature 1: a row's first n tokens do not depend on max_new_tokens
    # (its own seeded generator draws once per token), so every cut must match exactly
    engine = HFEngine(tiny_dir, max_batch_size=1)
    prompts = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)}
               for a, b in ((3, 4), (10, 20), (7, 7))]
    rollout = RolloutConfig(max_concurrency=1, tool_timeout_s=5.0)
    _, rows, reasons = _check_cuts_equal_runs(engine, pool, tokenizer, prompts,
                                              [12, 40, 96], 3, rollout)
    assert "length" in reasons
    short = [r["response_tokens"] for r in rows if r["budget"] == 12]
    assert max(short) <= 12 and min(short) >= 1


def test_cut_equals_a_separate_run_around_tool_turns(tokenizer, pool):
    # every boundary of a two-call trajectory: inside a sampled turn, at the last token of a
    # turn, inside and just past a tool turn (tool-output tokens count toward the budget)
    turns = ["Let me compute. " + _call("x = 17 * 23\nprint(x)"),
             "Now add five. " + _call("print(x + 5)"),
             "So the answer is \\boxed{396}."]
    engine = ScriptedEngine(tokenizer, turns)
    prompts = [{"problem": "What is 17 * 23 + 5?", "answer": "396"}]
    rollout = RolloutConfig(max_concurrency=4, tool_timeout_s=5.0)
    big = EvalConfig(k=1, max_tool_calls=8, max_tokens=4000, pass_k=[1])
    _, (row,) = evaluate(engine, pool, {"b": prompts}, big, tokenizer, rollout_cfg=rollout)
    assert row["finish_reason"] == "answer" and row["tool_calls"] == 2
    total = row["response_tokens"]
    sampled1 = len(tokenizer.encode(turns[0], add_special_tokens=False)) + 1
    tool1 = len(engine.calls[1]) - len(engine.calls[0]) - sampled1
    edges = {sampled1, sampled1 + tool1, total}
    budgets = sorted({b + d for b in edges for d in (-1, 0, 1)} | {5, total + 50})
    summary, rows, reasons = _check_cuts_equal_runs(engine, pool, tokenizer, prompts, budgets,
                                                    1, rollout)
    assert reasons == {"length", "answer"}
    calls = {r["budget"]: r["tool_calls"] for r in rows}
    # the turn fits at sampled1: its call runs, then its tool turn would reach the budget
    assert calls[sampled1 - 1] == 0 and calls[sampled1] == calls[sampled1 + tool1] == 1
    assert calls[sampled1 + tool1 + 1] == 1 and calls[total - 1] == calls[total] == 2
    assert summary["budgets"][str(total)]["accuracy"] == 1.0
    assert summary["budgets"][str(total - 1)]["accuracy"] == 0.0


def test_one_table_and_one_samples_file_per_budget(tokenizer, pool, tmp_path):
    engine = ScriptedEngine(tokenizer, ["It is \\boxed{7}." + " pad" * 30])
    cfg = EvalConfig(k=2, max_tool_calls=8, budgets=[400, 10], max_tokens=400, pass_k=[1])
    summary, rows = evaluate(engine, pool, {"b": [{"problem": "7?", "answer": "7"}]}, cfg,
                             tokenizer, rollout_cfg=RolloutConfig(tool_timeout_s=5.0))
    assert summary["accuracy"] == 1.0 and summary["budgets"]["10"]["accuracy"] == 0.0
    table = format_table(summary)
    assert table.index("budget 10 tokens") < table.index("budget 400 tokens")
    write_results(summary, rows, tmp_path)
    large = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    small = [json.loads(x) for x in (tmp_path / "samples-10.jsonl").read_text().splitlines()]
    assert {r["budget"] for r in large} == {400} and {r["budget"] for r in small} == {10}
    assert len(large) == len(small) == 2


@pytest.mark.parametrize("budgets", [[0, 10], "30000", [True]])
def test_bad_budgets_are_one_line_errors(budgets):
    with pytest.raises(ValueError, match="eval.budgets"):
        EvalConfig(budgets=budgets)


def test_a_budget_past_max_tokens_is_refused_not_dropped():
    """max_tokens is what the generation runs at; an override of it below the config's budgets
    (qwen3-4b's [30000, 90000]) must not be silently ignored, nor the budgets."""
    with pytest.raises(ValueError, match="go past eval.max_tokens=64"):
        EvalConfig(budgets=[30000, 90000], max_tokens=64)
    assert EvalConfig(budgets=[10], max_tokens=64).budget_list == [10, 64]
