"""Kernel tests run where the kernels run: on the GPU when CUDA is there (Triton compiles for
it and refuses CPU tensors), else on CPU under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 only without CUDA). Inputs are built on CPU from seeded generators, so the
numbers are the same everywhere, and handed to the kernels on `tests.kernels._inputs.DEVICE`
(`on_device`, `run_logprobs`)."""

from __future__ import annotations

from tests.kernels import _inputs


def pytest_report_header(config):
    where = "the GPU" if _inputs.DEVICE.type == "cuda" else "CPU (Triton's interpreter)"
    return f"aster kernel tests run on {where}"
