"""Stages load only what they use: `aster sft` reads only the SFT file, `aster rl` only the
prompts (the eval sets only when it evaluates), the whole recipe all three."""

from __future__ import annotations

import pytest

from aster.config import load_config
from aster.data.io import DataError
from aster.train.pipeline import check_inputs, needed_data


def _cfg(name, *overrides):
    return load_config(name, ["model.path=", *overrides])


def test_each_stage_config_needs_only_its_own_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' data files do not exist here
    (tmp_path / "sft.parquet").write_bytes(b"")
    (tmp_path / "dapo.parquet").write_bytes(b"")
    sft = _cfg("qwen3-4b-sft", "data.sft_path=sft.parquet")
    assert needed_data(sft) == {"sft"}
    check_inputs(sft)  # no RL prompts, no eval sets: fine
    rl = _cfg("qwen3-4b-rl-stage1", "data.rl_path=dapo.parquet")
    assert needed_data(rl) == {"rl"}
    check_inputs(rl)
    with pytest.raises(DataError, match=r"data.rl_path='dapo_17k.parquet': no such file"):
        check_inputs(_cfg("qwen3-4b-rl-stage1"))
    evaluating = _cfg("qwen3-4b-rl-stage1", "data.rl_path=dapo.parquet",
                      "run.stages=[rl_stage1,eval]")
    assert needed_data(evaluating) == {"rl", "eval"}
    with pytest.raises(DataError, match=r"data.eval_paths\[0\]='aime24.parquet'"):
        check_inputs(evaluating)
    whole = _cfg("qwen3-4b", "data.sft_path=sft.parquet", "data.rl_path=dapo.parquet")
    assert needed_data(whole) == {"sft", "rl", "eval"}


def test_the_tiny_default_still_reads_everything():
    assert needed_data(load_config(None, [])) == {"sft", "rl", "eval"}
    # an RL-only tiny run still builds its tokenizer on the synthetic SFT conversations
    assert needed_data(load_config(None, ["run.stages=[rl_stage1]"])) == {"sft", "rl"}
