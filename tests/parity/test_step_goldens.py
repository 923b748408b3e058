"""SFT-step and GRPO-step parity against goldens recorded on CPU with the reference kernels.

Regenerate (only when the suite itself changes, never to make a test pass):
    aster parity record --device cpu --kernel-impl reference \
        --out tests/parity/golden/steps_cpu_reference.json
Tolerances per dtype are aster.parity_record.TOLERANCES (justified there).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from aster.backend import select_backend
from aster.cli import main
from aster.parity import record_suite
from aster.parity_record import compare_records

GOLDEN = Path(__file__).parent / "golden" / "steps_cpu_reference.json"


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def cpu_chunked_record():
    return record_suite(select_backend("cpu", kernel_impl="chunked"), ["float64", "float32"])


def test_cpu_chunked_matches_the_reference_goldens(cpu_chunked_record):
    rows, ok = compare_records(_golden(), cpu_chunked_record)
    bad = [r for r in rows if not r["ok"]]
    assert ok, f"out of tolerance: {bad}"
    assert len(rows) == 2 * len(_golden()["results"]["float32"])


def test_goldens_are_meaningful():
    gold = _golden()["results"]["float32"]
    assert gold["sft_step.loss"] > 1.0  # ~ln(101) for a random init
    assert gold["grpo_step.loss"] != 0.0 and gold["grpo_step.grad_norm"] > 0
    assert gold["grpo_step.clip_frac_upper"] > 0 and gold["grpo_step.clip_frac_lower"] > 0


def test_a_perturbed_record_fails_compare(tmp_path, cpu_chunked_record, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(cpu_chunked_record))
    broken = copy.deepcopy(cpu_chunked_record)
    broken["results"]["float32"]["grpo_step.grad_norm"] *= 1.01
    bad.write_text(json.dumps(broken))
    assert main(["parity", "compare", str(GOLDEN), str(good)]) == 0
    assert main(["parity", "compare", str(GOLDEN), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "grpo_step.grad_norm" in out and "NO" in out and "1 NOT" in out


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert main(["parity", "compare", str(tmp_path / "nope.json"), str(GOLDEN)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_triton_matches_the_cpu_goldens():
    record = record_suite(select_backend("cuda"), ["float64", "float32"])
    # float64 runs too: token_logprobs routes it from Triton to the chunked kernels
    assert not any("skipped" in values for values in record["results"].values()), record
    rows, ok = compare_records(_golden(), record)
    assert ok, [r for r in rows if not r["ok"]]


@pytest.mark.npu
def test_npu_matches_the_cpu_goldens():
    record = record_suite(select_backend("npu"), ["float32"])
    rows, ok = compare_records(_golden(), record)
    assert ok, [r for r in rows if not r["ok"]]


def test_same_backend_is_bitwise_reproducible(cpu_chunked_record):
    torch.manual_seed(0)
    again = record_suite(select_backend("cpu", kernel_impl="chunked"), ["float32"])
    assert again["results"]["float32"] == cpu_chunked_record["results"]["float32"]


def test_a_dtype_whose_kernel_does_not_compile_is_recorded_and_reported(monkeypatch, tmp_path,
                                                                         capsys):
    # Triton's compile failure is a CompilationError (an Exception, not a RuntimeError): the
    # record keeps the other dtypes and names the reason; compare says what it left out.
    from triton.compiler.errors import CompilationError

    from aster import parity

    def no_float64(dtype, device):
        if dtype == torch.float64:
            raise CompilationError("kernel.py", None, "dot does not support float64")
        return {"x": 1.0}

    monkeypatch.setattr(parity, "SUITE", {"kernels": no_float64})
    record = parity.record_suite(select_backend("cpu"), ["float64", "float32"])
    assert record["results"]["float64"]["skipped"].startswith("CompilationError")
    assert record["results"]["float32"] == {"kernels.x": 1.0}
    full = {**record, "results": {**record["results"], "float64": {"kernels.x": 1.0}}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(full))
    b.write_text(json.dumps(record))
    assert main(["parity", "compare", str(a), str(b)]) == 0
    assert "not compared: float64: skipped in B (CompilationError" in capsys.readouterr().out
