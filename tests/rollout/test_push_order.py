"""The weight push in the engine's order, against a stand-in vLLM that keeps vLLM's sleep / wake
rules (tests/rollout/standin_vllm.py): the engine sleeps at level 2 after its rollouts, the
push wakes its weights alone, streams buckets in, releases the trainer's cache, and only then
wakes the KV cache; the extra bytes alive during the push stay within one bucket plus the
largest tensor (in fp32 and cast). And the engine's start does not freeze the trainer's heap."""

from __future__ import annotations

import gc
import types
import weakref

import pytest
import torch
from torch import nn

from aster.backend import DistInfo, select_backend
from aster.rollout.config import RolloutConfig
from aster.rollout.engine import SamplingParams
from aster.train import rollouts
from aster.train.config import DistributedConfig
from aster.train.strategy import build_strategy
from tests.rollout.standin_vllm import LiveBytes, install

BUCKET_MB = 1


class Trainer(nn.Module):
    """fp32 masters: a 1M-element embedding (the largest tensor) and 32 layers of 256K."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(8192, 128)
        self.layers = nn.ModuleList(nn.Linear(512, 512, bias=False) for _ in range(32))


class RecordingBackend:
    def __init__(self, events):
        self.events = events

    def empty_cache(self):
        self.events.append(("empty_cache",))


def _setup(monkeypatch, on_start=None):
    model = Trainer()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    events = install(monkeypatch, shapes, on_start=on_start)
    from aster.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("stand-in", dtype="bfloat16", enable_sleep_mode=True)
    ctx = types.SimpleNamespace(cfg=types.SimpleNamespace(
        rollout=RolloutConfig(weight_bucket_mb=BUCKET_MB)), hf_model=model,
        backend=RecordingBackend(events), compute_dtype=torch.bfloat16, dist=DistInfo(),
        strategy=build_strategy(DistributedConfig(strategy="none"), select_backend("cpu"),
                                torch.bfloat16))
    return engine, ctx, events


def _generate(engine):
    return engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, seed=0))


def test_push_wakes_weights_streams_buckets_then_wakes_the_kv_cache(monkeypatch):
    engine, ctx, events = _setup(monkeypatch)
    _generate(engine)
    assert rollouts.sleep_engine(engine)  # after the rollouts, for the update
    with pytest.raises(RuntimeError, match="sleep"):
        _generate(engine)
    events.clear()
    rollouts.push_weights(ctx, engine)
    _generate(engine)
    buckets = [e for e in events if e == ("rpc", "aster_push_bucket")]
    assert len(buckets) > 5  # 18 MiB of bf16 weights in 1 MiB buckets
    assert events == [("empty_cache",), ("wake", ("weights",)), ("rpc", "aster_begin_push"),
                      *buckets, ("rpc", "aster_end_push"), ("empty_cache",),
                      ("wake", ("kv_cache",)), ("reset_prefix_cache",), ("generate",)]
    pushed = engine.llm.model.named_checkpoint_weights()
    for name, master in ctx.hf_model.state_dict().items():
        assert torch.equal(pushed[name], master.to(torch.bfloat16)), name
    engine.close()


def test_sleep_level_2_discards_the_weights_until_a_push(monkeypatch):
    engine, ctx, events = _setup(monkeypatch)
    engine.sleep()
    assert ("sleep", 2) in events
    engine.wake()  # every tag back, but the weights were discarded
    with pytest.raises(RuntimeError, match="discarded"):
        _generate(engine)
    with pytest.raises(RuntimeError, match="discarded"):  # the stand-in's own rule too
        engine.llm.generate([[1]], [None])
    rollouts.push_weights(ctx, engine)
    _generate(engine)
    engine.sleep(level=1)  # level 1 keeps the weights (offloaded): a plain wake suffices
    engine.wake()
    _generate(engine)
    engine.close()


def test_push_holds_one_bucket_and_the_largest_tensor_beyond_the_weights(monkeypatch):
    engine, ctx, _ = _setup(monkeypatch)
    engine.sleep()
    largest = 8192 * 128
    bound = BUCKET_MB * 2**20 + (4 + 2) * largest  # a bucket + the largest in fp32 and bf16
    with LiveBytes() as during_push:
        rollouts.push_weights(ctx, engine)
    assert 0 < during_push.peak <= bound, (during_push.peak, bound)
    # the old push's full compute-dtype copy would not fit in that bound
    with LiveBytes() as full_copy:
        weights = rollouts.engine_weights(ctx)
    assert full_copy.peak > 2 * bound and len(weights) == 33
    engine.close()


def test_objects_made_before_the_engine_are_collected_after_it_starts(monkeypatch):
    """vLLM 0.32 freezes the gc heap at engine start (EngineCore.__init__ and the GPU worker
    call vllm.utils.gc_utils.freeze_gc_heap); the stand-in calls the real function there."""
    gc_utils = pytest.importorskip("vllm.utils.gc_utils")

    class Node:
        pass

    trainer_model = Node()
    trainer_model.cycle = trainer_model  # FSDP2 modules are cyclic: only the gc frees them
    alive = weakref.ref(trainer_model)
    try:
        engine, _, _ = _setup(monkeypatch, on_start=gc_utils.freeze_gc_heap)
        del trainer_model
        gc.collect()
        assert alive() is None, "a cycle made before the engine survived gc.collect()"
        assert gc.get_freeze_count() == 0
        engine.close()
    finally:
        gc.unfreeze()
