"""Pieces both trainers share: model loading, optimizer and schedule, the Updater (backward,
gradient clipping with the NaN guard and the step under any parallel strategy), saving a
stage's model as a Hugging Face directory."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from aster.errors import AsterUserError
from aster.train.model_source import ModelPathError

log = logging.getLogger("aster")


class TrainingDivergedError(AsterUserError):
    """The loss or gradient became NaN/inf; training stopped before corrupting the weights."""


def load_policy(path: str, model_cfg, backend):
    """(model in train mode on the backend's device, tokenizer) from a model directory. The
    parameters are fp32 masters whatever model.dtype says: model.dtype is the compute dtype
    (aster.train.precision)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.train.precision import MASTER_DTYPE, compute_dtype

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelPathError(f"model.path={path!r} is not a model directory (no config.json); "
                             "point it at a Hugging Face model directory or leave it empty "
                             "for the tiny model")
    compute_dtype(model_cfg.dtype, backend)  # a dtype the device lacks fails before loading
    attn = model_cfg.attn_implementation
    # packed=True: the trainers may pack sequences into rows (sft.packing, rl.packing)
    attn = backend.attn_implementation(packed=True) if attn == "auto" else attn
    model = AutoModelForCausalLM.from_pretrained(path, dtype=MASTER_DTYPE,
                                                 attn_implementation=attn)
    model = backend.prepare_model(model, fused_ops=model_cfg.fused_ops).to(backend.device())
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    from aster.rollout.templates import use_template

    tokenizer = use_template(AutoTokenizer.from_pretrained(path), model_cfg.chat_template)
    return model.train(), tokenizer


def build_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             betas=tuple(betas), foreach=False)


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, schedule: str = "constant"):
    """Linear warmup, then constant / cosine / linear decay to 0 at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def diverged_error(where: str, loss: float, grad_norm: float,
                   last_good: str | None) -> TrainingDivergedError:
    keep = f"the last good checkpoint is {last_good}" if last_good else \
        "no checkpoint was written yet"
    return TrainingDivergedError(f"{where}: loss={loss} grad_norm={grad_norm} is not finite; "
                                 f"stopped, {keep}; lower the learning rate or check the data")


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float, loss: float,
                   where: str, last_good: str | None) -> float:
    """Clip, guard against NaN/inf, step. Raises TrainingDivergedError without stepping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise diverged_error(where, loss, grad_norm, last_good)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class Updater:
    """The optimizer side of one training stage under the run's parallel strategy: backward,
    gradient clipping with the NaN guard, the step and the schedule. The trainers' loops call
    only this, so they read the same under none / ddp / fsdp2 / deepspeed:

        for chunk in updater.accumulate(micro_batches):
            updater.backward(loss_of(updater.policy, chunk))  # loss / global token count
        grad_norm = updater.step(loss_total, where, last_good)
    """

    def __init__(self, policy, optimizer, scheduler, max_grad_norm: float, world_size: int):
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.max_grad_norm, self.world_size = max_grad_norm, world_size

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def accumulate(self, items):
        """The micro batches of one optimizer step, in order."""
        yield from items

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (normalised by the global token count)."""
        (loss * self.world_size).backward()  # the wrappers average gradients over ranks

    def step(self, loss: float, where: str, last_good: str | None) -> float:
        """Clip, guard, step, zero the gradients; returns the gradient norm before clipping.
        Raises TrainingDivergedError (naming `last_good`) when loss or norm is not finite."""
        return optimizer_step(self.policy, self.optimizer, self.scheduler, self.max_grad_norm,
                              loss, where, last_good)


def build_updater(ctx, optimizer, scheduler, max_grad_norm: float) -> Updater:
    """The stage's Updater; for distributed.strategy=deepspeed this builds the engine and makes
    it ctx.policy (DeepSpeed needs the optimizer and schedule to build one)."""
    from aster.train.parallel import resolve_strategy

    if resolve_strategy(ctx.cfg.distributed.strategy, ctx.dist.world_size) == "deepspeed":
        from aster.train.ds_engine import DeepSpeedUpdater

        return DeepSpeedUpdater(ctx, optimizer, scheduler, max_grad_norm)
    return Updater(ctx.policy, optimizer, scheduler, max_grad_norm, ctx.dist.world_size)


def save_hf_model(model, tokenizer, out_dir: str | Path, is_main: bool = True,
                  dtype: torch.dtype | None = None) -> Path:
    """An ordinary Hugging Face directory of the (possibly sharded) model, its weights and
    config.json's dtype in `dtype` (the compute dtype; None: as trained); collective."""
    import copy
    import shutil

    from aster.train.parallel import full_state_dict, unwrap
    from aster.train.precision import cast_state, dtype_name

    state = full_state_dict(model)
    out = Path(out_dir)
    if is_main:
        tmp = out.with_name(out.name + ".tmp")
        inner = unwrap(model)
        if dtype is not None:
            state = cast_state(state, dtype)
        inner.save_pretrained(tmp, state_dict=state)
        if dtype is not None:  # save_pretrained records the (fp32) parameters' dtype
            config = copy.deepcopy(inner.config)
            config.dtype = dtype_name(dtype)
            config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out


class TrainContext:
    """What a trainer needs: config, backend, the policy (wrapped for parallelism), the plain
    Hugging Face model under it, tokenizer, run directory and metrics writer."""

    def __init__(self, cfg, backend, policy, hf_model, tokenizer, run_dir, writer,
                 compute_dtype: torch.dtype = torch.float32):
        self.cfg, self.backend = cfg, backend
        self.policy, self.hf_model, self.tokenizer = policy, hf_model, tokenizer
        self.run_dir, self.writer = Path(run_dir), writer
        # model.dtype: the forward/backward's dtype and what the engine and saved models get
        self.compute_dtype = compute_dtype
        self.updater: Updater | None = None  # the current stage's, set by the trainer

    @property
    def dist(self):
        return self.backend.dist

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across ranks in place (identity in a single process)."""
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def ckpt_dir(self, stage: str) -> Path:
        return self.run_dir / "checkpoints" / stage
