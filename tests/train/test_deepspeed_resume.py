"""`aster train` with distributed.strategy=deepspeed (ZeRO-3, one rank): SFT and both RL stages
run through the engine (partitioned weights gathered for the rollout engine and the saved
models), and a run killed mid-stage resumes from the engine's checkpoint reproducing the
uninterrupted run's metrics exactly. Slow: two pipelines."""

import pytest

from aster.backend import select_backend
from aster.config import load_config
from aster.metrics import read_metrics
from aster.train import pipeline
from tests.train.small import SMALL, deterministic_part, killed_after_first_rl_step

DS = ["distributed.strategy=deepspeed", "distributed.zero_stage=3",
      "run.stages=[sft,rl_stage1]"]


@pytest.fixture
def process_group():
    pytest.importorskip("deepspeed")
    yield
    import torch.distributed as dist

    if dist.is_initialized():  # the one-rank group DeepSpeed needs, made by aster
        dist.destroy_process_group()


def _run(out, resume=False):
    cfg = load_config(None, [*SMALL, *DS])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    return pipeline.run_pipeline(cfg, backend, output_dir=str(out), resume=resume)


@pytest.mark.slow
def test_deepspeed_crash_and_resume_reproduces_metrics_exactly(tmp_path, monkeypatch,
                                                               process_group):
    _run(tmp_path / "whole")
    whole = deterministic_part(read_metrics(tmp_path / "whole"))
    assert [r["stage"] for r in whole].count("rl_stage1") == 2
    assert (tmp_path / "whole" / "rl_stage1" / "model" / "config.json").is_file()
    with killed_after_first_rl_step(monkeypatch):
        _run(tmp_path / "cut")
    _run(tmp_path / "cut", resume=True)
    assert deterministic_part(read_metrics(tmp_path / "cut")) == whole
