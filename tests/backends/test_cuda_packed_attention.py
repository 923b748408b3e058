"""The CUDA backend without flash-attn (a failed source build, the device check's GPU): packed
training rows get per-sequence causal sdpa, never transformers' dense [T, T] mask, logged
once. The choice is checked on CPU with the backend's capabilities set by hand; the attention
itself runs on CPU tensors here and on the GPU under the `cuda` marker."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from aster.backend import Capabilities
from aster.backends.cpu.attention import NAME
from aster.backends.cuda import backend as cuda_backend
from tests.backends.test_cpu_attention import LENGTHS, _batch, _model


def _cuda_backend(flash: bool) -> cuda_backend.CUDABackend:
    be = cuda_backend.CUDABackend.__new__(cuda_backend.CUDABackend)
    be.capabilities = Capabilities(bf16=True, flash_attention=flash, packed_attention=True)
    be._probe = lambda probe: type("P", (), {"reason": "flash_attn not importable"})()
    return be


def test_without_flash_attn_packed_rows_get_per_sequence_sdpa_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(cuda_backend, "_VARLEN_LOGGED", False)
    be = _cuda_backend(flash=False)
    with caplog.at_level(logging.INFO, logger="aster"):
        assert be.attn_implementation(packed=True) == NAME
        assert be.attn_implementation(packed=True) == NAME
    lines = [r.getMessage() for r in caplog.records if "per-sequence" in r.getMessage()]
    assert len(lines) == 1 and "flash_attn not importable" in lines[0]
    assert be.attn_implementation(packed=False) == "sdpa"  # the hf engine's decode
    assert _cuda_backend(flash=True).attn_implementation(packed=True) == "flash_attention_2"


def _sdpa_calls_on_a_packed_row(device: str, monkeypatch) -> tuple[list, torch.Tensor]:
    """Every sdpa call's mask (None or its shape) for one packed forward, and the logits."""
    model = _model(_cuda_backend(flash=False).attn_implementation(packed=True)).to(device)
    mb = _batch(packed=True)
    calls, real = [], F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kw):
        calls.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        # as the trainer calls it (PolicyForward: no cache, so transformers reads the resets)
        logits = model(input_ids=mb.input_ids.to(device),
                       position_ids=mb.position_ids.to(device), use_cache=False).logits
    return calls, logits


def _alone(device: str) -> list[torch.Tensor]:
    """Each sequence of the pack in a row of its own (nothing to mask)."""
    model = _model("sdpa").to(device)
    mb = _batch(packed=True)
    out, start = [], 0
    with torch.no_grad():
        for p, r in LENGTHS:
            ids = mb.input_ids[:, start:start + p + r].to(device)
            out.append(model(input_ids=ids, use_cache=False).logits[0])
            start += p + r
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_packed_row_is_attended_per_sequence_without_a_mask(device, monkeypatch):
    calls, logits = _sdpa_calls_on_a_packed_row(device, monkeypatch)
    # 2 layers x one causal call per sequence (transformers' sdpa: 2 calls under a [T, T] mask)
    assert calls == [None] * (2 * len(LENGTHS))
    packed = torch.split(logits[0], [p + r for p, r in LENGTHS])
    for got, want in zip(packed, _alone(device)):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 if device == "cpu" else 2e-3)
