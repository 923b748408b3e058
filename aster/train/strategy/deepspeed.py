"""DeepSpeed ZeRO as the data-parallel strategy (distributed.strategy=deepspeed).

aster keeps its own optimizer (AdamW), schedule, micro batching and loss normalisation, the
same as under fsdp2; the engine shards (ZeRO stage 1: optimizer state, 2: + gradients,
3: + parameters), reduces gradients over the backend's collective, clips and steps. DeepSpeed is
imported only when this strategy is asked for.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aster.configio import deep_merge
from aster.errors import AsterUserError, CapabilityError
from aster.train.strategy import Strategy, unwrap
from aster.train.update import Updater, diverged_error

log = logging.getLogger("aster")

# Keys aster derives from its own config; a user's DeepSpeed JSON may not set them.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping", "optimizer", "scheduler")
ENGINE_TAG = "deepspeed"  # the engine's checkpoint sub-directory inside step-<N>/ (its tag)


def import_deepspeed(backend):
    """The deepspeed module, its accelerator the backend's device type (DS_ACCELERATOR)."""
    os.environ.setdefault("DS_ACCELERATOR", backend.device_type)
    try:
        import deepspeed
    except ImportError:
        raise CapabilityError("distributed.strategy=deepspeed needs DeepSpeed: pip install "
                              "deepspeed, or use distributed.strategy=fsdp2") from None
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name != backend.device_type:
        raise CapabilityError(f"DeepSpeed chose the {name!r} accelerator but --device "
                              f"{backend.name} trains on {backend.device_type!r}; set "
                              f"DS_ACCELERATOR={backend.device_type}")
    return deepspeed


def check_dtype(dtype: torch.dtype) -> None:
    if dtype == torch.float16:
        raise CapabilityError("model.dtype=float16 with distributed.strategy=deepspeed is not "
                              "supported (aster does no loss scaling); use bfloat16 or float32")


def read_user_config(path: str | None) -> dict:
    """distributed.deepspeed_config: a DeepSpeed JSON merged over the generated config."""
    if not path:
        return {}
    p = Path(path)
    try:
        user = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise AsterUserError(f"distributed.deepspeed_config={path!r}: cannot read a JSON "
                             f"object ({exc})") from None
    if not isinstance(user, dict):
        raise AsterUserError(f"distributed.deepspeed_config={path!r}: must hold a JSON object")
    owned = [k for k in OWNED_KEYS if k in user]
    if owned:
        raise AsterUserError(f"distributed.deepspeed_config={path!r} sets {', '.join(owned)}; "
                             "aster derives these from its sft./rl. keys: remove them")
    return user


def deepspeed_config(dist_cfg, *, world_size: int, max_grad_norm: float,
                     dtype: torch.dtype) -> dict:
    """The engine's config dict from aster's `distributed:` section (pure; no DeepSpeed)."""
    check_dtype(dtype)
    zero: dict = {"stage": dist_cfg.zero_stage}
    if dist_cfg.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if dist_cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    config = {
        # aster accumulates a variable number of micro batches per step, each loss already
        # normalised by the step's global token count: one engine micro batch, no GAS scaling,
        # the accumulation boundary set by the Updater.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # aster's AdamW, the same as under fsdp2
        "zero_force_ds_cpu_optimizer": False,
        # bf16 mode: the module's parameters in bf16, fp32 master weights and optimizer state
        # (bf16_master_weights_and_grads and bf16_optimizer_states stay at their false default)
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 2 ** 31 - 1,  # aster prints its own step line
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, read_user_config(dist_cfg.deepspeed_config))


def ensure_process_group(backend) -> None:
    """DeepSpeed needs a process group (and LOCAL_RANK) even for one rank; a single-process
    run has neither."""
    os.environ.setdefault("LOCAL_RANK", str(backend.dist.local_rank))
    if not dist.is_initialized():
        dist.init_process_group(backend.process_group_backend(), store=dist.HashStore(), rank=0,
                                world_size=1)


def _output_weight(policy) -> torch.nn.Parameter:
    return unwrap(policy).model.get_output_embeddings().weight


class DeepSpeedUpdater(Updater):
    """The Updater over a DeepSpeed engine built around the policy with the stage's optimizer
    and schedule; the engine is its `.policy`, what the stage trains."""

    def __init__(self, policy, strategy, optimizer, scheduler, max_grad_norm: float):
        deepspeed = import_deepspeed(strategy.backend)
        ensure_process_group(strategy.backend)
        dist_cfg, world = strategy.dist_cfg, strategy.world_size
        # the compute dtype: bf16 turns on the engine's bf16 mode over fp32 master partitions
        config = deepspeed_config(dist_cfg, world_size=world, max_grad_norm=max_grad_norm,
                                  dtype=strategy.compute_dtype)
        if dist_cfg.zero_stage == 3:
            # PolicyForward reads the output head's weight outside the head's own forward
            deepspeed.zero.register_external_parameter(policy, _output_weight(policy))
        engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer,
                                          lr_scheduler=scheduler, config=config,
                                          dist_init_required=False)
        log.debug("deepspeed engine: ZeRO stage %d, %d rank(s)", dist_cfg.zero_stage, world)
        super().__init__(engine, optimizer, scheduler, max_grad_norm, world)
        self.engine = engine

    def accumulate(self, items):
        items = list(items)
        for i, item in enumerate(items):
            # set before the forward: only the last micro batch reduces gradients
            self.engine.set_gradient_accumulation_boundary(i == len(items) - 1)
            yield item

    def backward(self, loss: torch.Tensor) -> None:
        # the engine averages gradients over ranks, as the other wrappers do
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self, loss: float, where: str, last_good: str | None) -> float:
        """Clip and step inside the engine; it skips a step whose gradient norm is not finite,
        and the guard then stops the run (the loss is checked before stepping)."""
        if not math.isfinite(loss):
            self.engine.zero_grad()
            raise diverged_error(where, loss, float("nan"), last_good)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else float("nan")
        if not math.isfinite(grad_norm):
            raise diverged_error(where, loss, grad_norm, last_good)
        return grad_norm


def is_engine(model) -> bool:
    """True for a DeepSpeed engine (without importing DeepSpeed when it is not in use)."""
    ds = sys.modules.get("deepspeed")
    return ds is not None and isinstance(model, ds.DeepSpeedEngine)


def is_partitioned(model) -> bool:
    """True when ZeRO stage 3 holds `model`'s parameters partitioned across ranks."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered_state_dict(model, cpu: bool = True) -> dict:
    """The full state dict of a ZeRO-3 partitioned module, gathered one tensor at a time (so
    no rank holds more than one extra full tensor at once); collective."""
    import deepspeed

    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if hasattr(tensor, "ds_id"):
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                out[name] = tensor.detach().to("cpu" if cpu else tensor.device, copy=True)
        else:
            out[name] = tensor.detach().to("cpu" if cpu else tensor.device, copy=True)
    return out


def save_engine(engine, directory: Path) -> None:
    """The engine's own sharded checkpoint (every rank writes its shards); collective."""
    engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False)


def load_engine(engine, directory: Path) -> None:
    loaded, _ = engine.load_checkpoint(str(directory), tag=ENGINE_TAG,
                                       load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    if loaded is None:
        raise AsterUserError(f"{directory}: no DeepSpeed checkpoint under {ENGINE_TAG}/; resume "
                             "with the distributed.strategy and world size that wrote it")


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO: the engine is built with the optimizer and schedule (the Updater), its
    bf16 mode casts the module and keeps fp32 master partitions; checkpoints are the engine's
    own sharded files (resume with the world size that wrote them)."""

    @staticmethod
    def memory_shards(zero_stage: int, devices: int) -> tuple[int, int, int]:
        # ZeRO stage 1 shards the optimizer state, 2 also the gradients, 3 also the parameters
        return (devices if zero_stage >= 3 else 1, devices if zero_stage >= 2 else 1, devices)

    name = "deepspeed"
    checkpoint_format = ENGINE_TAG
    single_rank_as_none = False  # ZeRO on one rank is still the engine (its offload, its format)

    def _wrap(self, policy):
        import_deepspeed(self.backend)
        check_dtype(self.compute_dtype or next(policy.parameters()).dtype)
        return policy  # the engine needs the optimizer: updater() builds it

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.distributed.zero_stage != 3:
            return
        if cfg.rl.dump_rollouts_dir or cfg.rl.replay_rollouts_dir:
            # ZeRO-3 leaves each rank a partition of every parameter: the step record's weight
            # checksums would read placeholders and agree vacuously
            raise AsterUserError("rollout dump/replay records need full parameters on every "
                                 "rank; use distributed.zero_stage=1 or 2, or "
                                 "distributed.strategy=fsdp2")
        if cfg.rl.kl_coef:
            raise AsterUserError(
                f"rl.kl_coef={cfg.rl.kl_coef} needs a reference policy, which aster shards "
                "with fsdp2 but not with DeepSpeed ZeRO-3; use distributed.strategy=fsdp2, or "
                "distributed.zero_stage=1 or 2 (full parameters on every rank, as the policy "
                "has)")

    @classmethod
    def owns(cls, model) -> bool:
        return is_engine(model) or is_partitioned(model)

    def updater(self, policy, optimizer, scheduler, max_grad_norm: float):
        return DeepSpeedUpdater(policy, self, optimizer, scheduler, max_grad_norm)

    @classmethod
    def gather_state(cls, model, cpu_offload: bool = True) -> dict:
        model = unwrap(model) if is_engine(model) else model
        if is_partitioned(model):
            return gathered_state_dict(model, cpu=cpu_offload)
        return Strategy.gather_state(model, cpu_offload)

    def full_tensors(self, model):
        """ZeRO-3: one parameter gathered at a time (a copy, as the partition is released
        when the gather ends); stages 1 and 2 hold every parameter on every rank."""
        if not is_partitioned(unwrap(model)):
            yield from super().full_tensors(unwrap(model))
            return
        import deepspeed

        for name, tensor in unwrap(model).state_dict(keep_vars=True).items():
            if hasattr(tensor, "ds_id"):
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    yield name, tensor.detach().clone()
            else:
                yield name, tensor.detach()

    @classmethod
    def save_state(cls, model, optimizer, directory: Path) -> None:
        save_engine(model, directory.parent)  # the engine writes <step dir>/<ENGINE_TAG>/

    @classmethod
    def load_state(cls, model, optimizer, directory: Path) -> None:
        load_engine(model, directory.parent)
