"""Starting a training stage: its Updater (built by the run's strategy) and its state restored
from the stage's latest checkpoint. The trainers, tests and benches share this one sequence
(RL's whole set-up: aster.train.rl.start_rl_stage)."""

from __future__ import annotations

import logging

from aster.train.checkpoint import latest_checkpoint, load_checkpoint
from aster.train.common import build_updater

log = logging.getLogger("aster")


def resume_stage(ctx, stage: str, optimizer, scheduler) -> tuple[int, str | None]:
    """Set up the stage's training state and load its latest checkpoint: builds ctx.updater
    (backward / clip / step under the parallel strategy; with distributed.strategy=deepspeed
    this makes the engine ctx.policy). Returns (first step to run, last good checkpoint)."""
    section = ctx.cfg.sft if stage == "sft" else ctx.cfg.rl
    ctx.updater = build_updater(ctx, optimizer, scheduler, section.max_grad_norm)
    ckpt = latest_checkpoint(ctx.ckpt_dir(stage))
    if ckpt is None:
        ctx.writer.truncate_after(stage, 0)  # records of a crashed first attempt
        return 0, None
    meta = load_checkpoint(ckpt, model=ctx.policy, optimizer=optimizer, scheduler=scheduler)
    ctx.writer.truncate_after(stage, meta["step"])
    log.info("%s: resumed from %s (step %d)", stage, ckpt, meta["step"])
    return meta["step"], str(ckpt)
