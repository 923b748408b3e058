"""`aster data synth` through an aster rollout engine: the tiny teacher (tests/data/conftest.py)
runs aster's agent loop with the real HF engine and the real sandbox; the trajectories are
written as SFT data, match what the engine saw, and a rerun only does what is missing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from aster.cli import main
from aster.data.curate import trajectory_stats
from aster.data.formats import load_sft
from aster.data.synth import SynthConfig, synthesize
from aster.data.synth_engine import EngineTeacher
from aster.data.trajectory import TrajectoryConverter
from aster.rollout import RolloutConfig, run_rollouts
from aster.rollout.chat import apply_template, encode_prompt, prompt_messages
from aster.rollout.hf_engine import HFEngine
from aster.train.sft import encode_conversation
from tests.data.conftest import TAUGHT
from tests.rollout.conftest import ScriptedEngine

UNSEEN = (2, 3)
PROMPTS = [{"problem": f"What is {a} * {b} + 5?", "answer": str(a * b + 5)}
           for a, b in [*TAUGHT, UNSEEN]]
CFG = SynthConfig(temperature=0.0, max_tokens=256, max_tool_calls=4, concurrency=2)


class RecordingEngine(HFEngine):
    """The real HF engine, keeping every (prompt ids, sampled ids) it served; it raises when
    a prompt holds `fail_on` (a crash in the middle of a run)."""

    def __init__(self, path, tokenizer, fail_on: str | None = None):
        super().__init__(path)
        self.tokenizer, self.fail_on, self.seen = tokenizer, fail_on, []

    def generate(self, prompts, params):
        if self.fail_on and any(self.fail_on in self.tokenizer.decode(p) for p in prompts):
            raise RuntimeError("engine died")
        outputs = super().generate(prompts, params)
        self.seen += [(list(p), list(o.token_ids)) for p, o in zip(prompts, outputs)]
        return outputs


def _engine_view(seen, tokenizer, problem: str) -> list[int]:
    """Everything the engine saw and sampled for `problem`: its last request plus output."""
    start = encode_prompt(tokenizer, prompt_messages(problem))
    mine = [p + o for p, o in seen if p[:len(start)] == start]
    return max(mine, key=len)


def test_engine_synth_parquet_resumes_and_matches_the_engine(teacher_dir, tmp_path, pool,
                                                             capsys):
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    out = tmp_path / "sft.parquet"
    crashing = RecordingEngine(teacher_dir, tok, fail_on="2 * 3")
    with pytest.raises(RuntimeError, match="engine died"):  # dies in the second batch
        synthesize(PROMPTS, out, CFG, EngineTeacher(CFG, crashing, tok, pool), progress=False)
    assert len(load_sft(out).examples) == 2 and not list(tmp_path.glob(".sft.parquet.parts"))

    engine = RecordingEngine(teacher_dir, tok)
    counts = synthesize(PROMPTS, out, CFG, EngineTeacher(CFG, engine, tok, pool), progress=False)
    assert counts["done"] == 1 and counts["skipped"] == 2 and counts["rejected"] == 0
    assert engine.seen and all("2 * 3" in tok.decode(p) for p, _ in engine.seen)

    table = pq.read_table(out)
    assert table.column_names[:2] == ["conversations", "tools"]
    assert {"problem", "sample", "answer", "correct", "finish_reason",
            "tool_calls"} <= set(table.column_names)
    rows = {r["problem"]: r for r in table.to_pylist()}
    loaded = load_sft(out)
    assert loaded.layout == "sharegpt" and len(loaded.examples) == 3
    for example, raw in zip(loaded.examples, loaded.rows):
        row = rows[raw["problem"]]
        taught = raw["problem"] != "What is 2 * 3 + 5?"
        assert row["correct"] is taught and row["finish_reason"] == "answer"
        assert [t["role"] for t in row["conversations"]] == [
            "user", "function", "tool", "function", "tool", "assistant"]
        assert row["conversations"][1]["content"].startswith("<think>\nmultiply first\n</think>")
        stats = trajectory_stats(example)
        assert stats.tool_calls == row["tool_calls"] == 2 and stats.use == "causal"
        # token-in/token-out: the written conversation encodes for SFT to exactly the engine's
        # tokens, the sampled ones trained and nothing else
        enc = encode_conversation(tok, example["messages"], example["tools"])
        seen = [(p, o) for p, o in crashing.seen + engine.seen]
        view = _engine_view(seen, tok, raw["problem"])
        assert enc.ids == view
        sampled = {len(p) + k for p, o in seen if view[:len(p) + len(o)] == p + o
                   for k in range(len(o))}
        assert {k for k, m in enumerate(enc.mask) if m} == sampled

    again = RecordingEngine(teacher_dir, tok)
    counts = synthesize(PROMPTS, out, CFG, EngineTeacher(CFG, again, tok, pool), progress=False)
    assert counts["done"] == 0 and counts["skipped"] == 3 and again.seen == []
    capsys.readouterr()
    assert main(["data", "curate", str(out), str(tmp_path / "cur.parquet"),
                 "--min-tool-calls", "2"]) == 0
    assert re.search(r"incorrect answer\s+-1\n", capsys.readouterr().out)
    assert pq.read_table(tmp_path / "cur.parquet").schema == table.schema


def test_engine_synth_cli_messages_jsonl_resumes(teacher_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "sft.jsonl"
    args = ["data", "synth", str(prompts), str(out), "--model", teacher_dir, "--engine", "hf",
            "--format", "openai", "--temperature", "0", "--max-tokens", "256",
            "--concurrency", "2", "--no-progress"]
    assert main(args) == 0
    assert "wrote 3 new trajectories" in capsys.readouterr().out
    loaded = load_sft(out)
    assert loaded.layout == "openai" and len(loaded.examples) == 3
    calls = loaded.rows[0]["messages"][1]["tool_calls"]
    assert isinstance(calls[0]["function"]["arguments"], str)
    assert [r["correct"] for r in loaded.rows] == [True, True, False]
    assert main(args) == 0
    assert "wrote 0 new trajectories" in capsys.readouterr().out
    # a kill mid-write leaves a cut-off line: the rerun drops it and redoes only the missing
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:50])
    assert main(args) == 0
    assert "wrote 2 new trajectories" in capsys.readouterr().out
    assert sorted(r["problem"] for r in load_sft(out).rows) == sorted(p["problem"]
                                                                       for p in PROMPTS)


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_synth_with_vllm_cpu_matches_hf(teacher_dir, tmp_path):
    pytest.importorskip("vllm")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    outs = {}
    for engine in ("hf", "vllm"):
        outs[engine] = tmp_path / f"{engine}.parquet"
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        proc = subprocess.run(
            [sys.executable, "-m", "aster.cli", "data", "synth", str(prompts), str(outs[engine]),
             "--model", teacher_dir, "--engine", engine, "--temperature", "0", "--max-tokens",
             "256", "--concurrency", "3", "--no-progress"],
            cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
            timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "wrote 3 new trajectories" in proc.stdout
    hf, vllm = (pq.read_table(outs[e]).to_pylist() for e in ("hf", "vllm"))
    assert [r["correct"] for r in vllm] == [True, True, False]
    assert [r["conversations"] for r in vllm] == [r["conversations"] for r in hf]  # greedy


def test_engine_and_endpoint_together_is_a_user_error(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(PROMPTS[0]) + "\n")
    rc = main(["data", "synth", str(prompts), str(tmp_path / "o.jsonl"), "--engine", "hf",
               "--endpoint", "http://127.0.0.1:9/v1"])
    assert rc == 2 and "--engine" in capsys.readouterr().err


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


def _canonical(text: str) -> str:
    """Rendered text up to the template's freedom: call JSON spelling, space around calls."""
    def call(match):
        try:
            return "<tool_call>" + json.dumps(json.loads(match.group(1)), sort_keys=True) + \
                "</tool_call>"
        except json.JSONDecodeError:  # the template's own instructions in the system turn
            return match.group(0)

    text = re.sub(r"<tool_call>\s*(.*?)\s*</tool_call>", call, text, flags=re.DOTALL)
    return re.sub(r"\s*(<tool_call>|</tool_call>|</think>)\s*", r"\1", text)


def _thinking_tokenizer(tiny_dir):
    """The tiny tokenizer with a Qwen3-Thinking-style generation prompt ending in <think>."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    head, sep, tail = tok.chat_template.rpartition("'<|im_start|>assistant\\n'")
    tok.chat_template = head + "'<|im_start|>assistant\\n<think>\\n'" + tail
    return tok


def test_converter_multi_call_turns_and_open_think(tiny_dir, pool):
    tok = _thinking_tokenizer(tiny_dir)
    turns = ["plan\n</think>\n\n" + _call("a = 2") + "\n" + _call("b = a * 3\nprint(b)"),
             "checked\n</think>\n\nSo \\boxed{6}."]
    engine = ScriptedEngine(tok, turns)
    messages = prompt_messages("What is 2 * 3?")
    (traj,) = run_rollouts(engine, pool, [{"messages": messages, "answer": "6"}],
                           RolloutConfig(max_response_tokens=512), tokenizer=tok)
    converter = TrajectoryConverter(tok)
    assert converter.opens_think and not TrajectoryConverter(
        AutoTokenizer.from_pretrained(tiny_dir)).opens_think
    example = converter.example(traj, messages, "6")
    assistant = [m for m in example["messages"] if m["role"] == "assistant"]
    assert assistant[0]["content"] == "<think>\nplan\n</think>"  # the prompt opened it
    assert [c["function"]["arguments"]["code"] for c in assistant[0]["tool_calls"]] == [
        "a = 2", "b = a * 3\nprint(b)"]
    assert [m["content"] for m in example["messages"] if m["role"] == "tool"] == [
        "(no output)", "6\n"]  # what the sandbox answers for a silent cell
    assert assistant[1]["content"] == "<think>\nchecked\n</think>\n\nSo \\boxed{6}."
    seen = tok.decode(engine.calls[-1]) + turns[-1] + tok.eos_token
    rendered = apply_template(tok, example["messages"])
    assert _canonical(rendered.rstrip("\n")) == _canonical(seen)


def test_malformed_calls_are_rejected_with_the_reason_and_not_redone(tiny_tokenizer, tmp_path,
                                                                     pool):
    bad = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": print(7)}}\n' \
          '</tool_call>'
    cfg = SynthConfig(max_tokens=512, max_tool_calls=4, concurrency=2)
    prompts = [{"problem": "What is 7?", "answer": "7"}, {"problem": "What is 8?", "answer": "8"}]
    out = tmp_path / "o.jsonl"

    def run(todo, turns):
        engine = ScriptedEngine(tiny_tokenizer, turns)
        return synthesize(todo, out, cfg, EngineTeacher(cfg, engine, tiny_tokenizer, pool),
                          progress=False)

    assert run(prompts[:1], [bad, "\\boxed{7}"])["rejected"] == 1
    rejected = [json.loads(x) for x in (tmp_path / "o.jsonl.rejected.jsonl").read_text()
                .splitlines()]
    assert rejected[0]["problem"] == "What is 7?" and "malformed tool call" in rejected[0]["reason"]
    counts = run(prompts, [_call("print(8)"), "\\boxed{8}"])  # only the second prompt is new
    assert counts["done"] == 1 and counts["skipped"] == 1 and counts["correct"] == 1
    assert [r["problem"] for r in load_sft(out).rows] == ["What is 8?"]
