"""The trainer puts the rollout engine to sleep for the update and wakes it before the new
weights go in (aster.train.rollouts), on a real RL stage; engines that cannot sleep stay awake
with the reason logged once."""

from __future__ import annotations

import logging

from aster.backend import select_backend
from aster.config import load_config
from aster.rollout.hf_engine import HFEngine
from aster.train import pipeline, rl, rollouts
from tests.train.small import SMALL


class SleepyHFEngine(HFEngine):
    """A real HFEngine that reports the sleep capability and records what the trainer asks
    of it (and refuses to generate while asleep, as a sleeping vLLM cannot)."""

    supports_sleep = True

    def __init__(self, *args, events: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.events = events
        self.asleep = False

    def generate(self, prompts, params):
        assert not self.asleep, "generate() on a sleeping engine"
        self._note("generate")
        return super().generate(prompts, params)

    def load_weights(self, weights):
        assert not self.asleep, "load_weights() on a sleeping engine"
        self.events.append("load_weights")
        super().load_weights(weights)

    def sleep(self):
        assert not self.asleep, "sleep() twice"
        self.events.append("sleep")
        self.asleep = True

    def wake(self):  # idempotent, as vLLM's: only a real transition is recorded
        if self.asleep:
            self.events.append("wake")
        self.asleep = False

    def _note(self, event: str):
        if not self.events or self.events[-1] != event:
            self.events.append(event)


def _run_rl_stage(tmp_path, monkeypatch, events: list[str], sleepy: bool):
    def make_engine(ctx, model_dir, max_model_len=None):
        if sleepy:
            return SleepyHFEngine(model_dir, events=events)
        return HFEngine(model_dir)

    def recorded_update(*args, **kwargs):
        events.append("update")
        return real_update(*args, **kwargs)

    real_update = rl.policy_update
    monkeypatch.setattr(rollouts, "make_engine", make_engine)
    monkeypatch.setattr(rl, "policy_update", recorded_update)
    cfg = load_config(None, [*SMALL, "run.stages=[rl_stage1]", "rl.stage1.max_steps=2"])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    pipeline.run_pipeline(cfg, backend, output_dir=str(tmp_path / "run"))


def test_engine_sleeps_for_each_update_and_wakes_before_new_weights(tmp_path, monkeypatch):
    events: list[str] = []
    _run_rl_stage(tmp_path, monkeypatch, events, sleepy=True)
    step = ["generate", "sleep", "update", "wake", "load_weights"]
    # the stage's first push (engine awake), then two steps, each: roll out, sleep, update,
    # wake, load the new weights
    assert events == ["load_weights", *step, *step], events


def test_engine_without_sleep_stays_awake_and_says_why_once(tmp_path, monkeypatch, caplog):
    events: list[str] = []
    with caplog.at_level(logging.INFO, logger="aster"):
        _run_rl_stage(tmp_path, monkeypatch, events, sleepy=False)
    notes = [r.getMessage() for r in caplog.records if "stays awake" in r.getMessage()]
    assert notes == ["rollout engine hf stays awake during updates: " + HFEngine.sleep_note]
    assert events == ["update", "update"]
