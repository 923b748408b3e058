"""A shrunken tiny config for fast end-to-end tests (seconds, not minutes)."""

from contextlib import contextmanager

import pytest

from aster.metrics import MetricsWriter

SMALL = ["data.synthetic.num_sft=16", "data.synthetic.num_rl=8", "data.synthetic.num_eval=4",
         "data.synthetic.samples_per_problem=1",
         "sft.epochs=1", "sft.global_batch_size=8", "sft.micro_batch_size=4",
         "rl.prompts_per_step=2", "rl.mini_batch_prompts=1", "rl.group_size=2",
         "rl.max_tokens_per_micro_batch=4096", "rl.stage1.max_steps=2", "rl.stage2.max_steps=1",
         "rl.stage1.max_response_tokens=64", "rl.stage2.max_response_tokens=64",
         "rollout.max_response_tokens=64", "eval.k=1", "eval.max_tokens=64", "eval.budgets=[]",
         "checkpoint.every_steps=1", "logging.tensorboard=false"]
TIMING_KEYS = ("time", "tokens_per_s", "mem_", "step_time", "wall", "gen_", "tool_s",
               "overhead")


def deterministic_part(records: list[dict]) -> list[dict]:
    """Metrics records without wall-clock and memory fields."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)}
            for r in records]


class Crash(Exception):
    pass


@contextmanager
def killed_after_first_rl_step(monkeypatch):
    """Inside, the pipeline dies (Crash) right after logging its first rl_stage1 step, as a
    kill would; the block must raise it. MetricsWriter.write is restored on the way out."""
    original, calls = MetricsWriter.write, {"n": 0}

    def write(self, stage, step, metrics, global_step=None, **kwargs):
        original(self, stage, step, metrics, global_step, **kwargs)
        if stage == "rl_stage1":
            calls["n"] += 1
            if calls["n"] == 1:
                raise Crash("killed")

    monkeypatch.setattr(MetricsWriter, "write", write)
    try:
        with pytest.raises(Crash):
            yield
    finally:
        monkeypatch.setattr(MetricsWriter, "write", original)
