"""Probes for the optional CUDA packages: each imports the package and runs one tiny op on
the GPU against a plain-torch result, so a wheel built for another torch, CUDA or GPU
architecture switches its feature off (with the reason logged) instead of crashing later.
Results are cached per process and device."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from aster.backends.common import Probe, has_module, run_probe


def _check_close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float) -> None:
    err = (got.float() - want.float()).abs().max().item()
    if not err <= atol:  # also catches nan
        raise RuntimeError(f"{what} differs from plain torch by {err:.3g} (> {atol})")


def _flash_attn_tiny_op(device: str) -> None:
    from flash_attn import flash_attn_func  # the compiled extension loads here
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        raise RuntimeError("transformers does not accept this flash-attn version")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 2, 64, generator=gen).to(device, torch.bfloat16)
               for _ in range(3))  # [batch, seq, heads, head_dim]
    out = flash_attn_func(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)),
                                         is_causal=True).transpose(1, 2)
    _check_close(out, ref, "flash_attn_func", atol=2e-2)


def _vllm_tiny_op(device: str) -> None:
    import vllm  # noqa: F401 - the package itself (platform detection, version checks)
    from vllm import _custom_ops as ops  # loads vllm._C, built against one torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=gen).to(device, torch.bfloat16)
    w = (torch.rand(64, generator=gen) + 0.5).to(device, torch.bfloat16)
    out = torch.empty_like(x)
    ops.rms_norm(out, x, w, 1e-6)
    xf = x.float()
    ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
    _check_close(out, ref, "vllm rms_norm", atol=5e-2)


@functools.cache
def flash_attn_probe(device: str = "cuda") -> Probe:
    """flash-attn 2 imports, transformers accepts it and its causal attention matches sdpa."""
    if not has_module("flash_attn"):
        return Probe(False, "flash-attn is not installed")
    return run_probe("flash-attn", lambda: _flash_attn_tiny_op(device))


@functools.cache
def vllm_probe(device: str = "cuda") -> Probe:
    """vLLM imports and its compiled rms_norm op runs and matches plain torch on `device`."""
    if not has_module("vllm"):
        return Probe(False, "vllm is not installed")
    return run_probe("vllm", lambda: _vllm_tiny_op(device))


def clear_cache() -> None:
    """Forget the probe results (tests swap packages in and out)."""
    flash_attn_probe.cache_clear()
    vllm_probe.cache_clear()
