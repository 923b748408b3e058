"""Colocated trainer and rollout engine over a whole `aster train` (SFT, RL stage 1, filter,
RL stage 2, eval): one engine for the run (vLLM's sleep mode asserts on a second one in a
process: "Sleep mode can only be used for one instance per process"), asleep whenever a stage
loads or trains its model, and the training allocator's cache freed right before every wake."""

from __future__ import annotations

from aster.backend import select_backend
from aster.config import load_config
from aster.train import pipeline, rl, rollouts
from tests.rollout.test_sleep_wake import SleepyHFEngine
from tests.train.small import SMALL


class OneSleepModeEngine(SleepyHFEngine):
    """A SleepyHFEngine that, like vLLM's sleep-mode worker, refuses to be the second
    sleep-mode engine of the process."""

    built = 0

    def __init__(self, *args, events: list[str], **kwargs):
        type(self).built += 1
        assert type(self).built == 1, "Sleep mode can only be used for one instance per process."
        super().__init__(*args, events=events, **kwargs)

    def close(self):
        self.events.append("close")
        super().close()


def test_one_engine_per_run_asleep_while_training_cache_freed_before_wake(tmp_path, monkeypatch):
    events: list[str] = []
    engines: list[OneSleepModeEngine] = []
    OneSleepModeEngine.built = 0
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")

    def make_engine(ctx, model_dir, max_model_len=None):
        engines.append(OneSleepModeEngine(model_dir, events=events))
        return engines[0]

    def state() -> str:
        return "none" if not engines else "asleep" if engines[0].asleep else "awake"

    def make_context(cfg, backend, model_dir, run_dir, writer, **kwargs):
        events.append(f"load_model:{state()}")
        return real_context(cfg, backend, model_dir, run_dir, writer, **kwargs)

    def update(*args, **kwargs):
        events.append(f"update:{state()}")
        return real_update(*args, **kwargs)

    real_context, real_update = pipeline.make_context, rl.policy_update
    monkeypatch.setattr(rollouts, "make_engine", make_engine)
    monkeypatch.setattr(pipeline, "make_context", make_context)
    monkeypatch.setattr(rl, "policy_update", update)
    monkeypatch.setattr(backend, "empty_cache", lambda: events.append("empty_cache"))
    cfg = load_config(None, SMALL)
    pipeline.run_pipeline(cfg, backend, output_dir=str(tmp_path / "run"))

    assert len(engines) == 1
    loads = [e for e in events if e.startswith("load_model")]
    assert loads == ["load_model:none", "load_model:asleep", "load_model:asleep"]
    updates = [e for e in events if e.startswith("update")]
    assert len(updates) == 3 and set(updates) == {"update:asleep"}  # 2 + 1 RL steps
    wakes = [i for i, e in enumerate(events) if e == "wake"]
    assert len(wakes) >= 5  # each RL stage's first push and every step's push
    assert all(events[i - 1] == "empty_cache" for i in wakes), events
    assert events.count("close") == 1 and events[-1] == "close"
