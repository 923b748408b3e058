"""Fixtures installing the plain-torch torch_npu stand-in (see standin_torch_npu.py)."""

from __future__ import annotations

import sys

import pytest

from aster.backends.ascend import probes, runtime
from tests.backends import standin_torch_npu


@pytest.fixture
def standin_npu(monkeypatch):
    """torch_npu replaced by the stand-in with one visible device; undone after the test."""
    module = standin_torch_npu.make_module(devices=1)
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    runtime.reset_cache()
    probes.clear_cache()
    yield module
    runtime.reset_cache()
    probes.clear_cache()


@pytest.fixture
def no_npu(monkeypatch):
    """torch_npu absent (whatever this machine has)."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    runtime.reset_cache()
    yield
    runtime.reset_cache()
