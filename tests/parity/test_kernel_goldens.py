"""Every kernel implementation available here against the float64 goldens recorded by
tests/parity/record_kernel_goldens.py (re-record with that script after an intended change).

Tolerances, per dtype and why:
- fp32 log-probs / entropy: atol 1e-4 + rtol 1e-4. Logits of size <= ~15 carry fp32 rounding of
  ~1e-6 each; logsumexp over up to 151936 terms adds ~1e-5; Triton and the chunked path sum in
  different orders, so we leave ~10x headroom.
- fp32 gradient checksums: atol 1e-4 * sum|g| (relative to the gradient's size, since the plain
  sum can cancel to ~0 and the projection sums 1e5+ terms of mixed sign).
- bf16 log-probs / entropy: Triton keeps the logits in fp32 (same 1e-4); the chunked path's
  matmul returns bf16 logits (relative 2**-9 rounding on |z| <= ~12 gives <= ~0.03 per logit,
  twice that through logsumexp): atol 8e-2.
- bf16 gradient checksums: gradients are returned in bf16 (relative 2**-9 each) and, for the
  chunked path, come from bf16-rounded logits: atol 2e-2 * sum|g|.
- policy loss (fp32 elementwise math, sums over <= 133 tokens): atol 1e-6, rtol 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

_SCRIPT = Path(__file__).parent / "record_kernel_goldens.py"
_spec = importlib.util.spec_from_file_location("record_kernel_goldens", _SCRIPT)
rec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rec)

GOLDEN = json.loads(rec.GOLDEN.read_text()) if rec.GOLDEN.exists() else None
LOGIT_TOL = {("float32", "chunked"): 1e-4, ("float32", "triton"): 1e-4,
             ("bfloat16", "chunked"): 8e-2, ("bfloat16", "triton"): 1e-4}
GRAD_TOL = {"float32": 1e-4, "bfloat16": 2e-2}


def _npu_available() -> bool:
    from aster.backend import backend_class

    return backend_class("npu").is_available()


def _targets():
    """(impl, device) pairs, each skipped with its reason when the hardware is absent."""
    has_triton = importlib.util.find_spec("triton") is not None
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return [
        pytest.param("chunked", "cpu", id="chunked-cpu"),
        pytest.param("triton", "cpu", id="triton-interpreter", marks=pytest.mark.skipif(
            not (has_triton and interp), reason="needs triton and TRITON_INTERPRET=1")),
        pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.cuda),
        pytest.param("chunked", "cuda", id="chunked-cuda", marks=pytest.mark.cuda),
        pytest.param("chunked", "npu", id="chunked-npu", marks=pytest.mark.npu),
    ]


def _impl_module(impl):
    return importlib.import_module(f"aster.kernels.{impl}")


def _close(got, want, atol, what):
    got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def golden():
    if GOLDEN is None:
        pytest.fail(f"{rec.GOLDEN} is missing: run python {_SCRIPT}")
    return GOLDEN


@pytest.mark.parametrize("impl,device", _targets())
@pytest.mark.parametrize("case", rec.LOGPROB_CASES, ids=[c[0] for c in rec.LOGPROB_CASES])
def test_token_logprobs_goldens(golden, impl, device, case):
    name, n, h, v, temperature, dtype, seed = case
    want = golden["token_logprobs"][name]
    hidden, weight, labels, g_lp, g_ent = rec.logprob_inputs(n, h, v, dtype, seed)
    _close(rec.checksum(hidden)[:2] + rec.checksum(weight)[:2], want["input_checksum"], 1e-6,
           f"{name} inputs changed (RNG drift?): re-record the goldens")
    moved = [t.to(device) for t in (hidden, weight, labels, g_lp, g_ent)]
    got = rec.logprob_outputs(_impl_module(impl).token_logprobs, *moved, temperature)
    tol = LOGIT_TOL[(dtype, impl)]
    _close(got["logp"], want["logp"], tol, f"{name} logp")
    _close(got["entropy"], want["entropy"], tol, f"{name} entropy")
    for key in ("grad_hidden", "grad_weight"):
        _close(got[key], want[key], GRAD_TOL[dtype] * want[key][1], f"{name} {key}")


@pytest.mark.parametrize("impl,device", _targets())
@pytest.mark.parametrize("case", rec.LOSS_CASES, ids=[c[0] for c in rec.LOSS_CASES])
def test_policy_loss_goldens(golden, impl, device, case):
    name, b, t, clip_c, tis_cap, seed = case
    want = golden["clipped_policy_loss"][name]
    inputs = [x.to(device) for x in rec.loss_inputs(b, t, seed)]
    got = rec.loss_outputs(_impl_module(impl).clipped_policy_loss, *inputs, clip_c, tis_cap)
    _close(got["loss"], want["loss"], 1e-6, f"{name} loss")
    _close(got["grad"], want["grad"], 1e-6 * max(1.0, want["grad"][1]), f"{name} grad")
    assert got["metrics"].keys() == want["metrics"].keys()
    for key, value in want["metrics"].items():
        _close(got["metrics"][key], value, 1e-6, f"{name} {key}")


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda),
                                    pytest.param("npu", marks=pytest.mark.npu)])
def test_accelerator_agrees_with_cpu(device):
    """On a machine with an accelerator, its default impl and CPU chunked give the same numbers
    (fp32: the tolerance of either against the goldens, twice)."""
    impl = "triton" if device == "cuda" else "chunked"
    name, n, h, v, temperature, dtype, seed = rec.LOGPROB_CASES[1]
    inputs = rec.logprob_inputs(n, h, v, dtype, seed)
    cpu = rec.logprob_outputs(_impl_module("chunked").token_logprobs, *inputs, temperature)
    dev = rec.logprob_outputs(_impl_module(impl).token_logprobs,
                              *[t.to(device) for t in inputs], temperature)
    _close(dev["logp"], cpu["logp"], 2e-4, "logp")
    _close(dev["grad_weight"], cpu["grad_weight"], 2e-4 * cpu["grad_weight"][1], "grad_weight")
