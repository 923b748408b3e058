"""Backend registry and --device selection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from aster import backend as backend_mod
from aster.backend import Backend, Capabilities, resolve_device_name, select_backend
from aster.errors import CapabilityError, ConfigError, DeviceUnavailableError

# what aster and its benchmarks (aster/, backends/, bench/) call on a backend: the test below
# keeps this list honest, so an attribute nothing uses cannot stay alive through this test
INTERFACE = ("name", "device_type", "dist_backend", "is_available", "init_distributed",
             "attn_implementation", "kernel_impl", "engine", "engine_options", "determinism_env",
             "set_deterministic", "peak_flops", "memory_stats", "require", "capabilities")
REPO = Path(__file__).resolve().parents[2]


def test_the_interface_lists_only_what_production_calls():
    sources = [p.read_text() for d in ("aster", "backends", "bench")
               for p in (REPO / d).rglob("*.py")]
    for attr in INTERFACE:
        used = re.compile(rf"\.{attr}\b")
        assert any(used.search(s) for s in sources), f"nothing in production uses .{attr}"


@pytest.mark.parametrize("name", ["cpu", "cuda", "npu"])
def test_every_backend_module_imports_and_subclasses_the_interface(name):
    cls = backend_mod.backend_class(name)
    assert issubclass(cls, Backend)
    assert cls.name == name
    assert cls.dist_backend == {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[name]
    for attr in ("name", "device_type", "dist_backend", "is_available", "init_distributed"):
        assert hasattr(cls, attr)


def test_cpu_backend_satisfies_the_interface():
    be = select_backend("cpu")
    for attr in INTERFACE:
        assert hasattr(be, attr), attr
    assert be.kernel_impl == "chunked" and be.engine == "hf"
    assert be.attn_implementation() == "aster_decode_sdpa"  # the engine's: GQA without copies
    assert isinstance(be.capabilities, Capabilities)
    assert be.device() == torch.device("cpu")
    assert be.memory_stats()["mem_peak_gib"] > 0
    assert be.describe()["dist_backend"] == "gloo"


def test_auto_is_cpu_without_accelerators(no_npu):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device_name("auto") == "cpu"
    assert select_backend("auto").name == "cpu"


def test_auto_prefers_npu_over_cuda_and_cpu(standin_npu):
    assert resolve_device_name("auto") == "npu"


@pytest.mark.parametrize("name,needle", [("npu", "torch_npu is not installed"),
                                         ("cuda", "no usable NVIDIA GPU")])
def test_missing_device_is_a_one_line_error_naming_what_to_install(no_npu, name, needle):
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceUnavailableError) as info:
        select_backend(name)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert "pip install" in message and "--device cpu" in message


def test_unknown_device_and_kernel_impl_are_config_errors():
    with pytest.raises(ConfigError, match="tpu"):
        select_backend("tpu")
    with pytest.raises(ConfigError, match="backend.kernel_impl='fast'"):
        select_backend("cpu", kernel_impl="fast")


def test_missing_capability_raises_instead_of_silently_doing_nothing():
    be = select_backend("cpu")
    with pytest.raises(CapabilityError, match="fused_model_ops"):
        be.prepare_model(torch.nn.Linear(2, 2), fused_ops=True)
    with pytest.raises(CapabilityError, match="sleep_mode"):
        be.require("sleep_mode")
    with pytest.raises(ValueError, match="unknown capability"):
        be.require("teleport")


def test_cuda_peak_flops_table():
    from aster.backends.cuda.backend import peak_bf16_flops_for

    assert peak_bf16_flops_for("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_bf16_flops_for("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert peak_bf16_flops_for("NVIDIA H200") == pytest.approx(989.4e12)
    assert peak_bf16_flops_for("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert peak_bf16_flops_for("Some Other GPU") is None


def test_cuda_determinism_env():
    from aster.backends.cuda.backend import CUDABackend

    env = CUDABackend.determinism_env(CUDABackend.__new__(CUDABackend))
    assert env["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")


@pytest.mark.cuda
def test_cuda_backend_on_a_gpu():
    be = select_backend("cuda")
    assert be.device().type == "cuda"
    assert be.peak_flops() is None or be.peak_flops() > 1e14


@pytest.mark.npu
def test_npu_backend_on_an_npu():
    be = select_backend("npu")
    assert be.dist_backend == "hccl" and be.kernel_impl == "chunked"
    assert be.capabilities.flash_attention
