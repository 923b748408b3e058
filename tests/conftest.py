"""Test-wide setup: CPU-first, hardware tests skip cleanly without their hardware."""

from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under the interpreter when there is no GPU; the flag must be set before
# any @triton.jit function is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: intra-op threads only add contention (decoding a tiny model is
# ~15x slower with 2 threads than with 1 on a 2-core box).
torch.set_num_threads(1)


def _npu_available() -> bool:
    from aster.backend import backend_class

    return backend_class("npu").is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    skip_npu = pytest.mark.skip(reason="needs an Ascend NPU with torch_npu and CANN")
    has_cuda = torch.cuda.is_available()
    has_npu = None
    for item in items:
        if item.get_closest_marker("cuda") and not has_cuda:
            item.add_marker(skip_cuda)
        if item.get_closest_marker("npu"):
            has_npu = _npu_available() if has_npu is None else has_npu
            if not has_npu:
                item.add_marker(skip_npu)
