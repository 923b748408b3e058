"""scripts/check_install.py (CI's `bash scripts/install.sh --check cuda|ascend`): a set that
names two torches fails, PyPI being unreachable is a note and not a failure. Metadata below is
what the real packages declare (read with pip --dry-run --report on 2026-11-28)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_install",
                                               REPO / "scripts" / "check_install.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

ASTER = {"name": "aster", "version": "0.1.0", "requires_dist": [
    "torch<=2.13.0,>=2.7", "transformers<5.20,>=4.57",
    'torch-npu==2.10.0.post4; extra == "ascend"', 'vllm-ascend==0.23.0; extra == "ascend"']}
ASCEND = {  # vllm-ascend 0.23.0 and torch-npu 2.10.0.post4 (aarch64 wheels)
    "torch-npu": {"name": "torch_npu", "version": "2.10.0.post4",
                  "requires_dist": ["torch ==2.10.0"]},
    "vllm-ascend": {"name": "vllm_ascend", "version": "0.23.0", "requires_dist": [
        "torch==2.10.0", "torch-npu==2.10.0.post4", "triton-ascend==3.2.2",
        "transformers==5.5.4"]}}
VLLM_EMPTY = {"name": "vllm", "version": "0.23.0", "requires_dist": [
    "transformers!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,>=4.56.0"]}


def test_the_ascend_pins_agree_on_one_torch():
    assert check.ascend_problems(ASTER, ASCEND, VLLM_EMPTY, check.Version("2.10.0")) == []


def test_torch_2_13_with_vllm_ascend_0_23_is_refused():
    # the pairing the README's version matrix used to show
    problems = check.ascend_problems(ASTER, ASCEND, VLLM_EMPTY, check.Version("2.13.0"))
    assert any("vllm-ascend 0.23.0 pins torch==2.10.0, not torch 2.13.0" in p for p in problems)


def test_a_transformers_pin_outside_asters_range_is_refused():
    old = {**ASCEND, "vllm-ascend": {**ASCEND["vllm-ascend"], "requires_dist": [
        "torch==2.10.0", "torch-npu==2.10.0.post4", "transformers<=4.57.1"]}}
    old["vllm-ascend"]["requires_dist"][-1] = "transformers==4.56.2"
    problems = check.ascend_problems(ASTER, old, VLLM_EMPTY, check.Version("2.10.0"))
    assert any("transformers 4.56.2, aster needs" in p for p in problems)


def test_a_cuda_set_whose_vllm_pins_another_torch_is_refused():
    meta = {"torch": {"name": "torch", "version": "2.11.0", "requires_dist": []},
            "vllm": {"name": "vllm", "version": "0.32.0",
                     "requires_dist": ["torch==2.13.0", "torchaudio==2.11.0"]}}
    assert check.cuda_problems(meta, "2.11.0") == [
        "vllm 0.32.0 pins torch==2.13.0, the set has torch 2.11.0"]
    meta["torch"]["version"] = "2.13.0"
    assert check.cuda_problems(meta, "2.13.0") == []


@pytest.mark.parametrize("stderr,code,says", [
    ("WARNING: Retrying (Retry(total=4, connect=None)) after connection broken by "
     "'NewConnectionError(...)': /simple/torch/\nERROR: No matching distribution found for "
     "torch==2.13.0", 0, "NOT CHECKED, PyPI unreachable or slow"),
    ("ERROR: Cannot install torch==2.11.0 and vllm==0.32.0 because these package versions "
     "have conflicting dependencies.\nERROR: ResolutionImpossible", 1, "FAILED"),
])
def test_unreachable_pypi_is_a_note_and_a_conflict_fails(monkeypatch, capsys, tmp_path, stderr,
                                                         code, says):
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0 if "--help" in cmd else 1, "", stderr)

    monkeypatch.setattr(check.subprocess, "run", fake_run)
    for key, value in {"CUDA_TORCH": "2.11.0", "CUDA_EXTRA": ".[cuda]",
                       "FLASH_ATTN": "flash-attn==2.8.3.post2",
                       "ASTER_CHECK_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    assert check.main(["cuda"]) == code
    assert says in capsys.readouterr().out
