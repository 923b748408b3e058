"""A training stage, built once: the model's context (aster.train.common.TrainContext) plus
the stage's optimizer, schedule, Updater (built by the run's strategy) and where it resumes,
restored from the stage's latest checkpoint. The trainers, tests and benches share this one
sequence (`open_stage`; RL's whole set-up: aster.train.rl.start_rl_stage, SFT's:
aster.train.sft.start_sft_stage); nothing is attached to a stage afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from aster.train.checkpoint import latest_checkpoint, load_checkpoint
from aster.train.common import TrainContext
from aster.train.update import Updater

log = logging.getLogger("aster")


# eq=False: compared and hashed by identity, as one live object (its fields hold modules)
@dataclass(frozen=True, kw_only=True, eq=False)
class TrainStage(TrainContext):
    """One stage's training state over a TrainContext. `policy` is what the stage trains
    (the strategy's engine where building the Updater makes one: DeepSpeed); `start` the
    first step to run and `last_good` the checkpoint it resumed from. RL stages also carry
    their objective (rl.loss), KL / entropy terms and the frozen reference policy
    (rl.kl_coef > 0; else None)."""

    name: str
    optimizer: Any
    scheduler: Any
    updater: Updater
    start: int = 0
    last_good: str | None = None
    objective: Any = None
    penalties: Any = None
    ref_policy: Any = None


def open_stage(ctx: TrainContext, name: str, section, optimizer, scheduler,
               **parts) -> TrainStage:
    """The stage `name` over `ctx`: its Updater from `section` (the stage's config section,
    cfg.sft or cfg.rl: max_grad_norm) under ctx.strategy, its latest checkpoint loaded (none:
    the metrics of a crashed first attempt dropped). `parts`: the RL stage's objective,
    penalties and ref_policy."""
    updater = ctx.strategy.updater(ctx.policy, optimizer, scheduler, section.max_grad_norm)
    start, last_good = _restore(ctx, name, updater.policy, optimizer, scheduler)
    base = {f.name: getattr(ctx, f.name) for f in fields(TrainContext)}
    return TrainStage(**{**base, "policy": updater.policy}, name=name, optimizer=optimizer,
                      scheduler=scheduler, updater=updater, start=start, last_good=last_good,
                      **parts)


def _restore(ctx, name: str, policy, optimizer, scheduler) -> tuple[int, str | None]:
    """(first step to run, last good checkpoint) after loading the stage's latest checkpoint
    into `policy`, the optimizer and the schedule."""
    ckpt = latest_checkpoint(ctx.ckpt_dir(name))
    if ckpt is None:
        if ctx.writer is not None:
            ctx.writer.truncate_after(name, 0)  # records of a crashed first attempt
        return 0, None
    meta = load_checkpoint(ckpt, model=policy, optimizer=optimizer, scheduler=scheduler)
    if ctx.writer is not None:
        ctx.writer.truncate_after(name, meta["step"])
    log.info("%s: resumed from %s (step %d)", name, ckpt, meta["step"])
    return meta["step"], str(ckpt)
