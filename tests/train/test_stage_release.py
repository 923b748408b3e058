"""A stage's context lives only in the call that trains it (aster.train.pipeline
._train_and_evaluate): with nothing attached to it, nothing keeps its model alive once the
stage is done, so the next stage loads its own model with the previous one already collected
(pipeline.release runs gc.collect for FSDP2's cyclic modules)."""

from __future__ import annotations

import weakref

from aster.backend import select_backend
from aster.config import load_config
from aster.train import pipeline
from tests.train.small import SMALL


def test_each_stage_model_is_collected_before_the_next_stage_loads(tmp_path, monkeypatch):
    models: list[weakref.ref] = []
    real = pipeline.make_context

    def make_context(*args, **kwargs):
        alive = [i for i, ref in enumerate(models) if ref() is not None]
        assert not alive, f"stage {alive}'s model is still alive when the next one loads"
        ctx = real(*args, **kwargs)
        models.extend([weakref.ref(ctx.hf_model), weakref.ref(ctx.strategy)])
        return ctx

    monkeypatch.setattr(pipeline, "make_context", make_context)
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    pipeline.run_pipeline(load_config(None, SMALL), backend, output_dir=str(tmp_path / "run"))
    assert len(models) == 6  # sft, rl_stage1, rl_stage2
    assert all(ref() is None for ref in models)
