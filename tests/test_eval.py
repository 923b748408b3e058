"""avg@k / pass@k evaluation: estimator, a real tiny model through the agent loop, the CLI."""

from __future__ import annotations

import json
import math

import pytest

from aster.cli import main
from aster.eval import EvalConfig, compare, pass_at_k, summarize_rows


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    with pytest.raises(ValueError, match="pass@5"):
        pass_at_k(4, 1, 5)


def _rows(bench, scores_per_problem, calls=2):
    return [{"benchmark": bench, "index": i, "sample": s, "score": float(v),
             "tool_calls": calls, "tool_errors": 0, "response_tokens": 10,
             "finish_reason": "answer"}
            for i, scores in enumerate(scores_per_problem) for s, v in enumerate(scores)]


def test_summary_and_compare(tmp_path):
    summary = summarize_rows(_rows("a", [[1, 0], [0, 0]]), [1, 2])
    assert summary["a"]["avg@2"] == pytest.approx(0.25)
    assert summary["a"]["pass@2"] == pytest.approx(0.5)
    assert summary["a"]["tool_calls_mean"] == 2
    for name, rows in (("sft", _rows("a", [[1, 0]], 1)), ("rl", _rows("a", [[1, 1]], 3))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = compare([str(tmp_path / "sft.jsonl"), str(tmp_path / "rl.jsonl")])
    line = next(x for x in table.splitlines() if "avg@2" in x)
    assert line.split()[-2:] == ["50.00", "100.00"]
    assert "tool_calls_mean" in table


def test_eval_config_validation():
    with pytest.raises(ValueError, match="eval.max_tool_calls"):
        EvalConfig(max_tool_calls=0)


def test_aster_eval_on_tiny_model(tmp_path, capsys):
    from aster.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    rc = main(["eval", "--model", model, "--device", "cpu", "--k", "2", "-o", str(out),
               "data.synthetic.num_sft=1", "data.synthetic.num_rl=1",
               "data.synthetic.num_eval=3", "eval.max_tokens=48", "eval.pass_k=[1,2]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and "avg@2" in printed and "tool_calls=" in printed
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["sample"] for r in rows} == {0, 1}
    assert all({"text", "answer", "score", "tool_calls"} <= set(r) for r in rows)
    assert all(r["response_tokens"] <= 48 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["accuracy"] <= 1.0 and "pass@2" in summary["benchmarks"]["synthetic"]
    assert main(["eval", "--compare", str(out / "samples.jsonl"), str(out / "samples.jsonl")]) == 0


def test_eval_without_model_is_a_user_error(capsys):
    assert main(["eval", "--device", "cpu", "data.synthetic.num_sft=1",
                 "data.synthetic.num_rl=1", "data.synthetic.num_eval=1"]) == 2
    assert "--model" in capsys.readouterr().err


def test_aster_eval_budgets_from_one_generation(tmp_path, capsys):
    from aster.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "run"
    rc = main(["eval", "--model", model, "--device", "cpu", "--k", "2", "-o", str(out),
               "--budgets", "48", "16", "data.synthetic.num_sft=1", "data.synthetic.num_rl=1",
               "data.synthetic.num_eval=2", "eval.pass_k=[1]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.index("budget 16 tokens") < printed.index("budget 48 tokens")
    large = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    small = [json.loads(x) for x in (out / "samples-16.jsonl").read_text().splitlines()]
    assert len(large) == len(small) == 4
    assert all(r["response_tokens"] <= 16 for r in small)
    assert max(r["response_tokens"] for r in large) > 16  # generated once, at 48
    for big, cut in zip(large, small):  # each cut is the large run's prefix
        assert big["text"].startswith(cut["text"].removesuffix("<|im_end|>"))
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["budgets"]) == ["16", "48"]


def test_eval_engine_gets_the_training_compute_dtype(tmp_path, monkeypatch):
    """model.dtype=auto means the same for `aster eval` as for training (bf16 where the backend
    has it; before, eval turned auto into float32 everywhere)."""
    from types import SimpleNamespace

    from aster.commands import eval as eval_cmd
    from aster.config import load_config
    from aster.tiny_model import build_tiny_model

    model = str(build_tiny_model(tmp_path / "model"))
    auto = load_config(None, ["model.dtype=auto"])
    seen = {}
    monkeypatch.setattr(eval_cmd, "build_engine",
                        lambda backend, path, rollout, **kw: seen.update(kw) or "engine")
    gpu_like = SimpleNamespace(name="gpu", device_type="gpu",
                               capabilities=SimpleNamespace(bf16=True))
    engine, _ = eval_cmd.load_engine(model, gpu_like, auto)
    assert engine == "engine" and seen["dtype"] == "bfloat16"
    cpu = SimpleNamespace(name="cpu", device_type="cpu", capabilities=SimpleNamespace(bf16=True))
    eval_cmd.load_engine(model, cpu, auto)
    assert seen["dtype"] == "float32"  # bf16 matmuls are slow on CPU
