"""Which world sizes a run can use, checked at start-up (before any process group or model).

Every rank must issue the same sequence of collectives: FSDP2 gathers parameters in every
forward, DDP and ZeRO reduce gradients in every backward, and the trainers all-reduce token
counts per mini batch. A rank with one more prompt runs one more forward and the ranks stop
pairing up: a hang, not an error. So a global batch must split into equal shares:

- SFT: `sft.global_batch_size` sequences per step (the last step of an epoch is filled up
  from the start of the epoch's order, so every step holds exactly that many);
- RL: `rl.prompts_per_step` prompts per step and `rl.mini_batch_prompts` per optimizer step
  (each rank's share of a mini batch is mini_batch_prompts / world size prompts; a world size
  that does not divide it would silently change the mini batch).

A world size that does not divide them is a one-line error, the same on every rank.
"""

from __future__ import annotations

from aster.errors import ConfigError

TRAINING_STAGES = {"sft": ("sft.global_batch_size",),
                   "rl_stage1": ("rl.prompts_per_step", "rl.mini_batch_prompts"),
                   "rl_stage2": ("rl.prompts_per_step", "rl.mini_batch_prompts")}


class WorldSizeError(ConfigError):
    """The launcher's world size does not split the configured global batch evenly."""


def _value(cfg, key: str) -> int:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def check_world_size(cfg, world_size: int) -> None:
    """Raise WorldSizeError when `world_size` does not divide a batch key of a training stage
    in `cfg.run.stages`; every rank raises the same one-line message."""
    if world_size <= 1:
        return
    keys = dict.fromkeys(k for stage in cfg.run.stages for k in TRAINING_STAGES.get(stage, ()))
    for key in keys:
        value = _value(cfg, key)
        if value % world_size:
            raise WorldSizeError(
                f"{key}={value} does not split evenly over {world_size} ranks (WORLD_SIZE="
                f"{world_size}): every rank must run the same micro batches; set {key} to a "
                f"multiple of {world_size} or launch a world size that divides {value}")
