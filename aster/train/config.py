"""Trainer configs: the `sft:`, `rl:`, `distributed:` and `checkpoint:` sections.

Defaults are the ASTER paper's (docs/recipe.md has the source of every value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aster.algo.losses import KL_ESTIMATORS, LOSSES
from aster.train.strategy import check_strategy_name


def _positive(section: str, obj, *keys: str) -> None:
    dot = f"{section}." if section else ""
    for key in keys:
        value = getattr(obj, key)
        if value is not None and not value > 0:  # `not >` also catches nan
            raise ValueError(f"{dot}{key}={value!r} must be > 0")


def _at_least(section: str, obj, low, *keys: str) -> None:
    dot = f"{section}." if section else ""
    for key in keys:
        value = getattr(obj, key)
        if value is not None and not value >= low:
            raise ValueError(f"{dot}{key}={value!r} must be >= {low}")


@dataclass
class SFTConfig:
    """Cold-start SFT: full fine-tune, loss on assistant tokens only."""

    lr: float = 3e-5
    # wsd (warmup-stable-decay): constant, then linear to 0 over the last decay_ratio of steps
    lr_schedule: Literal["constant", "cosine", "linear", "wsd"] = "constant"
    warmup_ratio: float = 0.06
    decay_ratio: float = 0.2  # wsd only: the share of steps the final decay takes
    epochs: int = 6
    global_batch_size: int = 128  # sequences per optimizer step, all ranks
    micro_batch_size: int = 1  # sequences per forward (or packs, with packing)
    cutoff_len: int = 32768  # longer samples are dropped and counted, never truncated
    packing: bool = True
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    save_every_steps: int = 0  # 0: at the end of each epoch

    def __post_init__(self):
        _positive("sft", self, "lr", "epochs", "global_batch_size", "micro_batch_size",
                  "cutoff_len", "max_grad_norm")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"sft.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if not 0 < self.decay_ratio <= 1 - self.warmup_ratio:
            raise ValueError(f"sft.decay_ratio={self.decay_ratio!r} must be in (0, 1 - "
                             f"sft.warmup_ratio={1 - self.warmup_ratio:g}]")
        _at_least("sft", self, 0, "weight_decay", "save_every_steps")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"sft.adam_betas={self.adam_betas!r} must be two values in [0, 1)")


@dataclass
class RLStageConfig:
    """What changes between RL stage 1 and stage 2."""

    max_response_tokens: int = 16384
    epochs: int = 1  # passes over the stage's prompt set
    max_steps: int = 0  # 0: no cap beyond epochs
    # stage 2: drop prompts answered correctly G/G during the previous stage's last epoch
    filter_all_correct: bool = False
    # stage 2 run alone: stage 1's RUN/rollouts/rl_stage1.jsonl the filter reads ("": this run's)
    filter_records: str = ""

    def __post_init__(self):
        _positive("", self, "max_response_tokens", "epochs")
        _at_least("", self, 0, "max_steps")


@dataclass
class CollapseMonitorConfig:
    """Warn when tool calls per trajectory collapse while reward is flat or falling."""

    enabled: bool = True
    early_steps: int = 5  # the baseline is the mean over these first steps
    window: int = 5  # recent steps compared against the baseline
    min_fraction: float = 0.5  # warn below this fraction of the early tool-call rate
    # after each RL stage's evaluation: warn when held-out tool calls per trajectory fell below
    # this fraction of after SFT while held-out accuracy did not rise (the step monitor sees
    # only rollouts, so a collapse in a stage's last updates shows only here)
    eval_min_fraction: float = 0.8

    def __post_init__(self):
        _positive("rl.collapse_monitor", self, "early_steps", "window")
        for key in ("min_fraction", "eval_min_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"rl.collapse_monitor.{key}={getattr(self, key)!r} must be in "
                                 "[0, 1]")


@dataclass
class RLConfig:
    """GRPO, outcome-only binary reward, clip-higher, no KL, no entropy bonus."""

    prompts_per_step: int = 128
    group_size: int = 8  # G samples per prompt
    mini_batch_prompts: int = 64  # 128 / 64 = 2 updates per step
    ppo_epochs: int = 1
    # micro batches by token budget: prompt + response tokens per forward (per rank), whole
    # trajectories packed until the next would pass it (one longer than the budget runs alone).
    # The public reproduction's ppo_max_token_len_per_gpu: 4 x (2048 + 16384) in stage 1,
    # 2 x (2048 + 30720) = 65536 in stage 2
    max_tokens_per_micro_batch: int = 65536
    # packed rows (no padding; position ids restart per trajectory); false: right-padded rows
    packing: bool = True
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_c: float | None = None  # dual clip for A < 0 (e.g. 3.0); None: off
    # the objective, a key of aster.algo.losses.LOSSES: grpo (token-mean clipped surrogate),
    # dr_grpo (constant normaliser), gspo (sequence-level ratio), cispo (clipped IS weights)
    loss: str = "grpo"
    # > 0: a frozen reference policy (the stage's starting weights) and kl_coef * KL(pi||ref)
    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"  # k1, k2, k3 / low_var_kl (verl's names)
    entropy_coef: float = 0.0  # > 0: minus entropy_coef * the token-mean entropy
    adv_std_norm: bool = True  # (r - mean) / (std + eps); false: r - mean
    # sample: the Bessel-corrected group std, as verl and TRL; population: divide by G
    adv_std: Literal["sample", "population"] = "sample"
    adv_eps: float = 1e-6
    # old log-probs: recompute (a no-grad forward before the updates), rollout (the engine's),
    # auto (recompute, except when a step makes exactly one optimizer update on its fresh
    # rollouts: then the old policy is the current one and the update's forward gives them)
    old_logp: Literal["auto", "recompute", "rollout"] = "auto"
    tis_cap: float | None = None  # truncated importance sampling cap; None: off
    stage1: RLStageConfig = field(default_factory=lambda: RLStageConfig(max_response_tokens=16384))
    stage2: RLStageConfig = field(default_factory=lambda: RLStageConfig(
        max_response_tokens=30720, filter_all_correct=True))
    collapse_monitor: CollapseMonitorConfig = field(default_factory=CollapseMonitorConfig)
    # rollout dump / replay (aster.train.replay): write each step's trajectories to this
    # directory, or train on the ones found there instead of generating (the rollout is skipped)
    dump_rollouts_dir: str | None = None
    replay_rollouts_dir: str | None = None

    def __post_init__(self):
        if self.dump_rollouts_dir and self.replay_rollouts_dir:
            raise ValueError(f"rl.dump_rollouts_dir={self.dump_rollouts_dir!r} and "
                             f"rl.replay_rollouts_dir={self.replay_rollouts_dir!r}: set one")
        _positive("rl", self, "prompts_per_step", "group_size", "mini_batch_prompts",
                  "ppo_epochs", "max_tokens_per_micro_batch", "lr", "max_grad_norm", "clip_c",
                  "tis_cap", "adv_eps")
        _at_least("rl", self, 0, "weight_decay", "warmup_steps", "kl_coef", "entropy_coef")
        if self.loss not in LOSSES:
            raise ValueError(f"rl.loss={self.loss!r} must be one of {', '.join(LOSSES)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"rl.kl_estimator={self.kl_estimator!r} must be one of "
                             f"{', '.join(KL_ESTIMATORS)}")
        if self.clip_c is not None and self.clip_c <= 1 + self.clip_high:
            raise ValueError(f"rl.clip_c={self.clip_c!r} (dual clip) must be > 1 + rl.clip_high "
                             f"= {1 + self.clip_high}")
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ValueError(f"rl.mini_batch_prompts={self.mini_batch_prompts} must divide "
                             f"rl.prompts_per_step={self.prompts_per_step}")
        if self.stage1.filter_records:
            raise ValueError(f"rl.stage1.filter_records={self.stage1.filter_records!r}: only "
                             "stage 2 filters; set rl.stage2.filter_records")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"rl.clip_low={self.clip_low!r} must be in [0, 1) and "
                             f"rl.clip_high={self.clip_high!r} >= 0")


@dataclass
class DistributedConfig:
    """Data parallel with sharded parameters through the backend's collective."""

    strategy: str = "auto"  # auto: fsdp2 if >1 rank; a name in aster.train.strategy's registry
    zero_stage: int = 3  # deepspeed: 1 optimizer state, 2 + gradients, 3 + parameters sharded
    cpu_offload: bool = False
    reshard_after_forward: bool = True  # fsdp2
    deepspeed_config: str | None = None  # a DeepSpeed JSON merged over the generated config
    timeout_s: float = 1800.0
    # how long ranks wait for the slowest one after their rollouts and evaluation shares (a
    # gloo group of its own: aster.train.rollout_wait); stage-2 long tails run 10-30 minutes
    rollout_timeout_s: float = 4 * 3600.0

    def __post_init__(self):
        check_strategy_name(self.strategy)
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"distributed.zero_stage={self.zero_stage!r} must be 1, 2 or 3")
        _positive("distributed", self, "timeout_s")
        if not 0 < self.rollout_timeout_s <= 7 * 86400:
            raise ValueError(f"distributed.rollout_timeout_s={self.rollout_timeout_s!r} must be "
                             "in (0, 604800] seconds")


@dataclass
class CheckpointConfig:
    """Atomic checkpoints for resume: model, optimizer, scheduler, RNG, data position."""

    every_steps: int = 50
    keep_last: int = 2

    def __post_init__(self):
        _positive("checkpoint", self, "every_steps", "keep_last")
