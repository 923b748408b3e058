"""Pieces both trainers share: model loading, optimizer and schedule, saving a stage's model
as a Hugging Face directory, the trainers' context (the stage built on it, with its Updater:
aster.train.stage)."""

from __future__ import annotations

import copy
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from aster.rollout.templates import use_template
from aster.train.model_source import ModelPathError
from aster.train.precision import MASTER_DTYPE, cast_state, compute_dtype, dtype_name
from aster.train.strategy import full_state_dict, unwrap
from aster.train.update import (  # noqa: F401 (their home before aster.train.update)
    TrainingDivergedError,
    Updater,
    diverged_error,
    optimizer_step,
)

log = logging.getLogger("aster")




def load_policy(path: str, model_cfg, backend):
    """(model in train mode on the backend's device, tokenizer) from a model directory. The
    parameters are fp32 masters whatever model.dtype says: model.dtype is the compute dtype
    (aster.train.precision)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    tokenizer = use_template(AutoTokenizer.from_pretrained(path), model_cfg.chat_template)
    return model.train(), tokenizer


def build_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             betas=tuple(betas), foreach=False)


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, schedule: str = "constant",
                    decay_steps: int = 0):
    """Linear warmup, then constant / cosine / linear decay to 0 at total_steps; `wsd`
    (warmup-stable-decay): constant, then linear to 0 over the last `decay_steps`."""
    decay_from = total_steps - decay_steps if schedule == "wsd" else warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if schedule == "constant" or step < decay_from:
            return 1.0
        if schedule == "wsd":
            return max(0.0, (total_steps - step) / max(1, decay_steps))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_hf_model(model, tokenizer, out_dir: str | Path, is_main: bool = True,
                  dtype: torch.dtype | None = None) -> Path:
    """An ordinary Hugging Face directory of the (possibly sharded) model, its weights and
    config.json's dtype in `dtype` (the compute dtype; None: as trained); collective."""
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


def all_reduce_sum(dist_info, tensor: torch.Tensor) -> torch.Tensor:
    """Sum across ranks in place (identity in a single process)."""
    if dist_info.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# eq=False: compared and hashed by identity, as one live object (its fields hold modules)
@dataclass(frozen=True, kw_only=True, eq=False)
class TrainContext:
    """What a trainer needs of a loaded model and its run, built once (by
    aster.train.pipeline.make_context) and never changed: config, backend, the parallel
    strategy, the policy it wrapped, the plain Hugging Face model under it, tokenizer, run
    directory, metrics writer (None: nothing recorded), the sandbox pool rollouts use. A
    training stage is this plus its training state (aster.train.stage.TrainStage)."""

    cfg: Any
    backend: Any
    strategy: Any  # the parallel strategy that wrapped `policy` (aster.train.strategy)
    policy: Any
    hf_model: Any
    tokenizer: Any
    run_dir: Path
    writer: Any = None
    # model.dtype: the forward/backward's dtype and what the engine and saved models get
    compute_dtype: torch.dtype = torch.float32
    model_dir: str | None = None  # the starting weights (the KL reference policy's)
    pool: Any = None  # the sandbox pool (None: a context that never rolls out)

    @property
    def dist(self):
        return self.backend.dist

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across ranks in place (identity in a single process)."""
        return all_reduce_sum(self.dist, tensor)

    def ckpt_dir(self, stage: str) -> Path:
        return Path(self.run_dir) / "checkpoints" / stage
