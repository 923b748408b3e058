"""The vLLM engine args aster builds for each mode and backend (no engine is started here):
the executor (uni / colocated external_launcher), sleep mode where the platform has it, and
the combinations that are refused."""

from __future__ import annotations

import os

import pytest

from aster.backend import Capabilities, select_backend
from aster.rollout.config import RolloutConfig
from aster.rollout.vllm_engine import engine_options, resolve_executor


def _backend(cls_path: str, sleep_mode: bool):
    """A GPU/NPU backend object as it is on a node with vLLM (no device needed to build args)."""
    module, name = cls_path.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    backend = cls.__new__(cls)
    backend.capabilities = Capabilities(vllm=True, sleep_mode=sleep_mode)
    backend.engine = "vllm"
    return backend


def test_executor_is_uni_alone_and_external_launcher_under_torchrun():
    assert resolve_executor("auto", 1) == "uni"
    assert resolve_executor("auto", 4) == "external_launcher"
    assert resolve_executor("uni", 4) == "uni"
    with pytest.raises(ValueError, match="rollout.vllm_executor"):
        resolve_executor("ray", 1)
    cpu = select_backend("cpu")  # default engine hf: rollout.engine=vllm still gets vllm args
    alone, _ = engine_options(cpu, RolloutConfig(engine="vllm"), world_size=1)
    assert "distributed_executor_backend" not in alone
    assert alone["enforce_eager"] and alone["gpu_memory_utilization"] == 0.1
    ranks, _ = engine_options(cpu, RolloutConfig(engine="vllm"), world_size=2)
    assert ranks["distributed_executor_backend"] == "external_launcher"
    # continuous batching runs on every torchrun rank too (batched stays the default)
    assert RolloutConfig().vllm_mode == "batched"
    for mode in ("continuous", "batched"):
        ranks, _ = engine_options(cpu, RolloutConfig(engine="vllm", vllm_mode=mode),
                                  world_size=2)
        assert ranks["distributed_executor_backend"] == "external_launcher", mode


def test_colocated_and_async_refusals():
    cpu = select_backend("cpu")
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_options(cpu, RolloutConfig(tensor_parallel_size=2), world_size=2)
    with pytest.raises(ValueError, match="vllm_mode=async"):
        engine_options(cpu, RolloutConfig(vllm_mode="async"), world_size=2)
    with pytest.raises(ValueError, match="vllm_mode=continuous or batched"):
        RolloutConfig(vllm_mode="async", vllm_executor="external_launcher")
    options, _ = engine_options(cpu, RolloutConfig(vllm_mode="async"), world_size=1)
    assert "distributed_executor_backend" not in options


def test_sleep_mode_on_where_the_platform_has_it():
    cpu = select_backend("cpu")
    options, note = engine_options(cpu, RolloutConfig(enable_sleep_mode=True))
    assert options["enable_sleep_mode"] is False
    assert note == "vLLM on the cpu backend has no sleep mode"
    for cls_path in ("aster.backends.cuda.backend.CUDABackend",
                     "aster.backends.ascend.backend.AscendBackend"):
        backend = _backend(cls_path, sleep_mode=True)
        options, note = engine_options(backend, RolloutConfig())
        assert options["enable_sleep_mode"] is True and note == "", cls_path
        options, note = engine_options(backend, RolloutConfig(enable_sleep_mode=False))
        assert options["enable_sleep_mode"] is False
        assert note == "rollout.enable_sleep_mode is false"
    no_sleep = _backend("aster.backends.cuda.backend.CUDABackend", sleep_mode=False)
    options, note = engine_options(no_sleep, RolloutConfig())
    assert options["enable_sleep_mode"] is False and "no sleep mode" in note


def test_build_engine_sets_the_backends_engine_env_before_the_engine_starts(monkeypatch):
    # vllm-ascend reads VLLM_ASCEND_ENABLE_NZ when its engine starts (and worker processes
    # inherit the environment), so the backend's engine_env() must be in place before that.
    pytest.importorskip("vllm")
    from aster.rollout import factory, vllm_engine, vllm_stream

    seen = {}

    class StartedEngine:
        sleep_note = ""

        def __init__(self, *args, **kwargs):
            seen["env"] = os.environ.get("ASTER_TEST_ENGINE_ENV")

    monkeypatch.setattr(vllm_engine, "VLLMEngine", StartedEngine)
    monkeypatch.setattr(vllm_stream, "VLLMStreamEngine", StartedEngine)  # the default mode
    monkeypatch.setenv("ASTER_TEST_ENGINE_ENV", "before")
    backend = select_backend("cpu", engine="vllm")
    monkeypatch.setattr(backend, "engine_env", lambda: {"ASTER_TEST_ENGINE_ENV": "set"})
    factory.build_engine(backend, "unused-model-path", RolloutConfig(engine="vllm"))
    assert seen["env"] == "set"
