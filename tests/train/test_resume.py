"""A run that crashes mid-stage and is resumed reproduces the uninterrupted run's metrics
exactly on CPU; NaN loss stops with a message and keeps the last good checkpoint."""

import pytest

from aster.backend import select_backend
from aster.config import load_config
from aster.metrics import read_metrics
from aster.train import pipeline
from aster.train.common import TrainingDivergedError
from tests.train.small import SMALL, deterministic_part, killed_after_first_rl_step

STAGES = ["run.stages=[sft,rl_stage1]"]


def _run(out, resume=False, extra=()):
    cfg = load_config(None, [*SMALL, *STAGES, *extra])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    return pipeline.run_pipeline(cfg, backend, output_dir=str(out), resume=resume)


def test_crash_and_resume_reproduces_metrics_exactly(tmp_path, monkeypatch):
    _run(tmp_path / "whole")
    whole = deterministic_part(read_metrics(tmp_path / "whole"))
    assert [r["stage"] for r in whole].count("rl_stage1") == 2

    with killed_after_first_rl_step(monkeypatch):
        _run(tmp_path / "cut")
    assert pipeline.read_state(tmp_path / "cut")["done"].keys() == {"sft"}
    _run(tmp_path / "cut", resume=True)
    assert deterministic_part(read_metrics(tmp_path / "cut")) == whole


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from aster.train import sft

    real = sft.sft_micro_loss
    count = {"n": 0}

    def nan_on_second_step(policy, batch, num_tokens):
        count["n"] += 1
        loss = real(policy, batch, num_tokens)
        return loss * float("nan") if count["n"] > 2 else loss  # 2 micro batches per step

    monkeypatch.setattr(sft, "sft_micro_loss", nan_on_second_step)
    with pytest.raises(TrainingDivergedError, match="not finite.*step-00000001"):
        _run(tmp_path / "nan", extra=["run.stages=[sft]", "sft.save_every_steps=1",
                                      "data.synthetic.num_sft=24"])
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "checkpoints" / "sft").iterdir())
    assert ckpts == ["step-00000001"]
