"""The qwen3-4b stage configs run alone as the one-command pipeline runs them: `aster rl
--config qwen3-4b-rl-stage2` runs stage 2 (its filter first), refuses in one line without
stage 1's records, and with them keeps exactly the prompts `aster train --config qwen3-4b`
keeps. Tiny stand-ins: the shipped configs with a one-layer random Qwen3 (real tokenizer)
and four DAPO prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aster.cli import main
from tests.qwen3.files import write_dapo

SMALL = ["--device", "cpu", "model.dtype=float32", "model.gradient_checkpointing=false",
         "distributed.strategy=none", "logging.tensorboard=false", "rollout.engine=hf",
         "data.rl_path=dapo.parquet", "rl.prompts_per_step=2", "rl.group_size=2",
         "rl.mini_batch_prompts=2", "rl.stage1.max_steps=1", "rl.stage2.max_steps=1",
         "rl.stage1.max_response_tokens=16", "rl.stage2.max_response_tokens=16",
         "rollout.max_response_tokens=16"]
# stage 1's last epoch (1): prompt 0 answered 2/2 (dropped), prompt 1 2/2 only in epoch 0
RECORDS = [(0, 0, [1.0, 0.0]), (1, 0, [1.0, 1.0]), (0, 1, [1.0, 1.0]), (1, 1, [0.0, 1.0]),
           (2, 1, [0.0, 0.0])]


@pytest.fixture
def stage1_run(tmp_path, monkeypatch):
    """A run directory where stage 1 finished, with its rollout records."""
    monkeypatch.chdir(tmp_path)
    write_dapo(tmp_path / "dapo.parquet", n=4)
    run = tmp_path / "stage1"
    (run / "rollouts").mkdir(parents=True)
    (run / "rollouts" / "rl_stage1.jsonl").write_text("".join(
        json.dumps({"prompt": p, "epoch": e, "step": 1 + e, "rewards": r,
                    "tool_calls": [0] * len(r)}) + "\n" for p, e, r in RECORDS))
    (run / "state.json").write_text(json.dumps({"done": {"rl_stage1": {}}}))
    return run


def _errors(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("aster:")]


def test_stage2_alone_without_records_is_one_line(qwen3_dirs, stage1_run, capsys):
    model = f"model.path={qwen3_dirs['thinking']}"
    # the config names stage 1's records where the stage-1 config writes them; none here
    assert main(["rl", "--config", "qwen3-4b-rl-stage2", "-o", "alone", *SMALL, model]) == 2
    # no records named at all (a config without rl.stage2.filter_records)
    assert main(["rl", "--config", "qwen3-4b-rl-stage2", "-o", "alone", *SMALL, model,
                 "rl.stage2.filter_records="]) == 2
    # `aster train` with the same config refuses the same way
    assert main(["train", "--config", "qwen3-4b-rl-stage2", "-o", "alone", *SMALL, model,
                 "rl.stage2.filter_records="]) == 2
    errors = _errors(capsys)
    assert len(errors) == 3
    for line in errors:
        assert "--filter-records RUN/rollouts/rl_stage1.jsonl" in line
        assert "rl.stage2.filter_all_correct=false" in line  # a prompt file already filtered
    assert not (stage1_run.parent / "alone").exists()  # refused before anything was written


def test_stage2_alone_keeps_the_pipelines_prompts(qwen3_dirs, stage1_run, capsys):
    model = f"model.path={qwen3_dirs['thinking']}"
    records = str(stage1_run / "rollouts" / "rl_stage1.jsonl")
    # the one-command pipeline (qwen3-4b's stages) after its stage 1: the filter it runs
    assert main(["train", "--config", "qwen3-4b", "-o", str(stage1_run), "--resume", *SMALL,
                 model, "run.stages=[rl_stage1,filter]"]) == 0
    together = json.loads((stage1_run / "rollouts" / "stage2_prompts.json").read_text())
    # the stage-2 config alone, given stage 1's records
    rc = main(["rl", "--config", "qwen3-4b-rl-stage2", "-o", "alone", *SMALL, model,
               "--filter-records", records])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    alone = stage1_run.parent / "alone"
    assert json.loads((alone / "rollouts" / "stage2_prompts.json").read_text()) == together
    assert len(together) == 3  # prompt 0 (2/2 in the last epoch) dropped, the rest kept
    assert "What is 6 * 7?" not in json.dumps(together)
    # it ran stage 2's settings, not stage 1's
    stages = {json.loads(x).get("stage") for x in (alone / "metrics.jsonl").read_text()
              .splitlines()} - {None}
    assert stages == {"rl_stage2"}
    assert (alone / "rl_stage2" / "model" / "config.json").is_file()
    assert not (alone / "rl_stage1").exists()
    assert json.loads((alone / "state.json").read_text())["done"]["filter"] == \
        {"kept": 3, "dropped": 1}


def test_stage_narrows_the_configs_stages(qwen3_dirs, stage1_run, capsys):
    model = f"model.path={qwen3_dirs['thinking']}"
    assert main(["rl", "--config", "qwen3-4b-rl-stage2", "--stage", "rl_stage1", "-o", "x",
                 *SMALL, model]) == 2
    assert main(["rl", "--config", "qwen3-4b-sft", "-o", "x", *SMALL, model]) == 2
    assert main(["sft", "--config", "qwen3-4b-rl-stage2", "-o", "x", *SMALL, model]) == 2
    errors = _errors(capsys)
    assert len(errors) == 3 and "--stage rl_stage1" in errors[0] and "no RL stage" in errors[1]
    assert "has no sft" in errors[2]

    from aster.train.stages import rl_stages

    whole = ["sft", "rl_stage1", "filter", "rl_stage2", "eval"]
    assert rl_stages(whole, None) == ["rl_stage1", "filter", "rl_stage2"]
    assert rl_stages(whole, "rl_stage2") == ["filter", "rl_stage2"]
    assert rl_stages(["filter", "rl_stage2"], None) == ["filter", "rl_stage2"]


def test_stage_configs_name_paths_aster_writes():
    """Each stage config starts from the model the previous stage config's run writes, and
    stage 2 reads the records stage 1's run writes (aster.train.pipeline.stage_model_dir)."""
    from aster.config import load_config
    from aster.train.pipeline import stage_model_dir

    sft, one, two = (load_config(f"qwen3-4b-{n}") for n in ("sft", "rl-stage1", "rl-stage2"))
    assert one.model.path == str(stage_model_dir(Path(sft.run.output_dir), "sft"))
    assert two.model.path == str(stage_model_dir(Path(one.run.output_dir), "rl_stage1"))
    assert two.rl.stage2.filter_records == f"{one.run.output_dir}/rollouts/rl_stage1.jsonl"


def test_missing_stage_model_says_which_stage_writes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_dapo(tmp_path / "dapo.parquet", n=2)
    assert main(["rl", "--config", "qwen3-4b-rl-stage1", "-o", "x", *SMALL]) == 2
    (line,) = _errors(capsys)
    assert "the sft stage of the run in runs/qwen3-4b-sft writes it" in line
