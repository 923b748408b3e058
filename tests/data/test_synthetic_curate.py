"""The synthetic task (sandbox-run references, disjoint splits) and interaction-density curation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aster.cli import main
from aster.data.config import DataConfig, SyntheticTaskConfig
from aster.data.curate import curate, tool_use_kind, trajectory_stats
from aster.data.formats import load_sft, make_call, validate_example, write_sft
from aster.data.synthetic import build_synthetic, sample_problems

SMALL = SyntheticTaskConfig(num_sft=6, num_rl=5, num_eval=4, seed=7)


def test_splits_are_disjoint_and_deterministic():
    cfg = SyntheticTaskConfig(num_sft=200, num_rl=100, num_eval=50, seed=3)
    sft, rl, ev = sample_problems(cfg)
    texts = [{p.text for p in split} for split in (sft, rl, ev)]
    assert [len(t) for t in texts] == [200, 100, 50]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert [p.text for p in sample_problems(cfg)[1]] == [p.text for p in rl]
    assert [p.text for p in sample_problems(SyntheticTaskConfig(seed=4))[1]] != [p.text for p in rl]


def test_values_stay_in_range_and_operators_name_their_clause():
    from aster.data.synthetic import _apply

    cfg = SyntheticTaskConfig(num_sft=300, num_rl=0, num_eval=0, max_steps=3, max_operand=99,
                              max_value=99, seed=5)
    problems = sample_problems(cfg)[0]
    for p in problems:
        value = int(p.steps[0].source)
        for step in p.steps:
            value = _apply(value, step.op, step.operand)
            assert 0 <= value <= 99 and 2 <= step.operand <= 99
        assert value == p.answer
        ops = [s.op for s in p.steps]
        assert len(set(ops)) == len(ops)  # no operator twice: it names its clause
    assert len({p.answer for p in problems}) > 40  # answers are spread, not a few constants
    wide = sample_problems(SyntheticTaskConfig(num_sft=50, num_rl=0, num_eval=0, seed=5))[0]
    assert max(p.answer for p in wide) > 999  # the default range keeps bigger numbers


def test_reference_trajectories_are_run_in_the_sandbox_and_stateful():
    data = build_synthetic(SMALL)
    assert len(data.sft) == 6 and len(data.rl) == 5 and len(data.eval) == 4
    for traj in data.sft:
        validate_example(traj)
        stats = trajectory_stats(traj)
        assert stats.tool_calls >= SMALL.min_steps and stats.tool_errors == 0
        assert stats.correct is True and stats.use == "causal"
        calls = [m for m in traj["messages"] if m.get("tool_calls")]
        later = calls[1]["tool_calls"][0]["function"]["arguments"]["code"]
        assert later.split(" = ")[1].startswith("a ")  # step 2 reads step 1's variable
        outputs = [m["content"].strip() for m in traj["messages"] if m["role"] == "tool"]
        assert outputs[-1] == traj["answer"]
        assert traj["messages"][-1]["content"].endswith(f"\\boxed{{{traj['answer']}}}")
    assert {"problem", "answer", "data_source"} <= set(data.rl[0])
    assert "Please reason" not in data.rl[0]["problem"]


def test_imperfect_teacher_answers_early_with_an_intermediate_value():
    cfg = SyntheticTaskConfig(num_sft=40, num_rl=3, num_eval=3, min_steps=2, max_steps=3,
                              max_operand=99, max_value=99, early_answer_prob=0.5, seed=11)
    data = build_synthetic(cfg)
    exact = build_synthetic(dataclasses.replace(cfg, early_answer_prob=0.0))
    assert data.rl == exact.rl and data.eval == exact.eval  # the knob leaves the problems alone
    early = 0
    for traj, full in zip(data.sft, exact.sft):
        stats = trajectory_stats(traj)
        assert stats.tool_errors == 0 and traj["answer"] == full["answer"]
        if stats.correct:  # an honest trajectory is the exact teacher's, message for message
            assert traj == full
            continue
        early += 1
        outputs = [m["content"].strip() for m in traj["messages"] if m["role"] == "tool"]
        assert 1 <= len(outputs) < trajectory_stats(full).tool_calls
        full_outputs = [m["content"].strip() for m in full["messages"] if m["role"] == "tool"]
        assert outputs == full_outputs[:len(outputs)]  # a prefix, answered with its last value
        assert traj["messages"][-1]["content"].endswith(f"\\boxed{{{outputs[-1]}}}")
    assert 10 <= early <= 30  # about half of 40


def test_several_teacher_samples_per_problem_draw_their_own_endings():
    cfg = SyntheticTaskConfig(num_sft=30, num_rl=2, num_eval=2, max_steps=3, max_operand=99,
                              max_value=99, early_answer_prob=0.5, samples_per_problem=4, seed=2)
    data = build_synthetic(cfg)
    assert len(data.sft) == 120
    groups = [data.sft[i:i + 4] for i in range(0, 120, 4)]
    for group in groups:  # a problem's samples are adjacent and share its prompt and answer
        assert len({(t["messages"][0]["content"], t["answer"]) for t in group}) == 1
    endings = [{trajectory_stats(t).correct for t in group} for group in groups]
    assert sum(e == {True, False} for e in endings) >= 10  # both endings of one problem
    early = sum(not trajectory_stats(t).correct for t in data.sft)
    assert 40 <= early <= 80  # about half of 120


def test_early_answer_prob_is_checked():
    with pytest.raises(ValueError, match="early_answer_prob"):
        SyntheticTaskConfig(early_answer_prob=1.0)
    with pytest.raises(ValueError, match="samples_per_problem"):
        SyntheticTaskConfig(samples_per_problem=0)


def test_trainer_entry_points_filter_by_tool_calls():
    from aster.data import eval_sets, rl_prompts, sft_examples

    cfg = DataConfig(min_tool_calls=3, synthetic=SMALL)
    kept = sft_examples(cfg)
    assert kept and all(trajectory_stats(t).tool_calls >= 3 for t in kept)
    assert len(rl_prompts(cfg)) == 5 and list(eval_sets(cfg)) == ["synthetic"]


def _traj(codes_outputs, answer="5", final="\\boxed{5}", problem="p"):
    msgs = [{"role": "user", "content": problem}]
    for code, out in codes_outputs:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [make_call(code)]})
        msgs.append({"role": "tool", "content": out})
    msgs.append({"role": "assistant", "content": final})
    return {"messages": msgs, "tools": None, "answer": answer}


def test_tool_use_kinds_and_errors():
    assert tool_use_kind(_traj([])) == "none"
    assert tool_use_kind(_traj([("print(2+3)", "5")])) == "post-hoc"
    assert tool_use_kind(_traj([("print(1)", "1"), ("print(2)", "2")])) == "independent"
    assert tool_use_kind(_traj([("x = 123", ""), ("print(x + 1)", "124")])) == "causal"
    assert tool_use_kind(_traj([("print(17*23)", "391"), ("print(391 + 5)", "396")])) == "causal"
    err = _traj([("1/0", "Traceback (most recent call last):\nZeroDivisionError: division by zero")])
    assert trajectory_stats(err).tool_errors == 1


def test_curate_filters_in_order_and_cli_writes_layout_read(tmp_path, capsys):
    rows = [_traj([("x = 1", "")] * 10, problem="a"),  # dense, correct
            _traj([("x = 1", "")] * 10, problem="a"),  # duplicate problem
            _traj([("x = 1", "")] * 10, final="\\boxed{6}", problem="b"),  # wrong answer
            _traj([("x = 1", "")] * 2, problem="c"),  # sparse
            _traj([("x = 1", "")] * 12, problem="d")]
    stats = [trajectory_stats(r) for r in rows]
    result = curate(rows, stats, min_tool_calls=9, dedup=True)
    assert result.kept == [0, 4]
    assert list(result.removed.values()) == [1, 1, 1]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_sft(rows, src, "openai")
    assert main(["data", "curate", str(src), str(out), "--dedup", "--size", "1"]) == 0
    printed = capsys.readouterr().out
    assert "tool_calls < 9" in printed and "sampled to --size 1" in printed
    kept = load_sft(out)
    assert kept.layout == "openai" and len(kept.examples) == 1
    png = tmp_path / "s.png"
    assert main(["data", "stats", str(src), "--png", str(png), "--json",
                 str(tmp_path / "s.json")]) == 0
    assert png.stat().st_size > 0
    assert json.loads((tmp_path / "s.json").read_text())["tool_calls_ge_9"] == 4


def test_a_shared_session_prints_what_fresh_sessions_print(monkeypatch):
    """Problems run in one sandbox session per chunk (a session start per problem made 14,336
    problems take minutes): each problem rebinds its variables before reading them, so the
    trajectories are exactly those of one fresh session per problem."""
    import aster.data.synthetic as synthetic

    cfg = SyntheticTaskConfig(num_sft=24, num_rl=1, num_eval=1, max_steps=3, max_operand=99,
                              max_value=99, early_answer_prob=0.5, seed=11)
    shared = build_synthetic(cfg)
    monkeypatch.setattr(synthetic, "PROBLEMS_PER_SESSION", 1)
    assert build_synthetic(cfg).sft == shared.sft
