"""Atomic checkpoints for resume: model, optimizer, scheduler, RNG states, data position,
stage and step. A checkpoint is written to a temporary directory and renamed into place, so a
killed run leaves either the previous checkpoint or the new one, never half of one."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("aster")

PREFIX = "step-"


def rng_state() -> dict:
    """Every RNG this process draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if acc is not None:
        state["accelerator"] = torch.get_device_module(acc.type).get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "accelerator" in state and torch.accelerator.is_available():
        acc = torch.accelerator.current_accelerator()
        torch.get_device_module(acc.type).set_rng_state_all(state["accelerator"])


def _model_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def _optim_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))


def save_checkpoint(ckpt_dir: str | Path, step: int, *, model, optimizer=None, scheduler=None,
                    extra: dict | None = None, keep_last: int = 2, is_main: bool = True) -> Path:
    """Write `ckpt_dir/step-<step>/` atomically (rank 0 writes; every rank must call, the
    state gathering is collective) and prune to the newest `keep_last`."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    state = {"model": _model_state(model),
             "optimizer": _optim_state(model, optimizer) if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": rng_state()}
    if not is_main:
        return final
    tmp = ckpt_dir / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.debug("checkpoint %s written", final)
    return final


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir()
                  if p.name.startswith(PREFIX) and (p / "meta.json").is_file())


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None) -> dict:
    """Restore model/optimizer/scheduler/RNG from `path`; returns its meta dict."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_model_state_dict(model, state["model"], options=opts)
    if optimizer is not None and state["optimizer"] is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "meta.json").read_text())
