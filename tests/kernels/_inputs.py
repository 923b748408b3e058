"""Seeded inputs and the float64 reference for the kernel tests."""

from __future__ import annotations

import os

import torch

from aster.kernels import reference


def kernel_device() -> torch.device:
    """cuda when a GPU is there and Triton is not forced into its interpreter, else cpu."""
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return torch.device("cuda" if torch.cuda.is_available() and not interpreting else "cpu")


DEVICE = kernel_device()


def on_device(*tensors):
    """The tensors moved to DEVICE (inputs are made on CPU so every machine sees the same
    numbers)."""
    return tuple(t.to(DEVICE) for t in tensors)


def make_inputs(n: int, h: int, v: int, dtype=torch.float32, seed: int = 0, scale: float = 1.0):
    """hidden [n, h], weight [v, h] (rounded to `dtype`), labels [n], upstream grads [n]."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen) * scale).to(dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    g_logp = torch.randn(n, generator=gen)
    g_ent = torch.randn(n, generator=gen)
    return hidden, weight, labels, g_logp, g_ent


def run_logprobs(fn, hidden, weight, labels, g_logp, g_ent, **kw):
    """(logp, entropy, grad_hidden, grad_weight) as float64, for upstream grads g_logp, g_ent."""
    hidden, weight, labels, g_logp, g_ent = on_device(hidden, weight, labels, g_logp, g_ent)
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    logp, ent = fn(h, w, labels, return_entropy=True, **kw)
    assert logp.dtype in (torch.float32, torch.float64) and ent.dtype == logp.dtype
    total = (logp * g_logp.to(logp.dtype)).sum() + (ent * g_ent.to(ent.dtype)).sum()
    gh, gw = torch.autograd.grad(total, [h, w])
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    return tuple(t.detach().double().cpu() for t in (logp, ent, gh, gw))


def run_reference(hidden, weight, labels, g_logp, g_ent, temperature=1.0):
    """The float64 ground truth for the same (already dtype-rounded) values."""
    return run_logprobs(reference.token_logprobs, hidden.double(), weight.double(), labels,
                        g_logp.double(), g_ent.double(), temperature=temperature)


def assert_close(got, want, atol, rtol, what=""):
    """Compare tuples elementwise, with a message naming the output."""
    names = ("logp", "entropy", "grad_hidden", "grad_weight")
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol,
                                   msg=lambda m, n=name: f"{what} {n}: {m}")
