"""Kernel tests run where the kernels run: on the GPU when CUDA is there (Triton compiles for
it and refuses CPU tensors), else on CPU under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 only without CUDA). Inputs are built on CPU from seeded generators, so the
numbers are the same everywhere, and moved to `tests.kernels._inputs.DEVICE` at each call."""

from __future__ import annotations

import pytest

from tests.kernels import _inputs


@pytest.fixture
def device():
    """The device the kernel under test gets its tensors on."""
    return _inputs.DEVICE
