"""Atomic checkpoints for resume: model, optimizer, scheduler, every rank's RNG states, data
position, stage and step. A checkpoint is written to a temporary directory and renamed into
place, so a killed run leaves either the previous checkpoint or the new one, never half of one."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from aster.errors import AsterUserError

log = logging.getLogger("aster")

PREFIX = "step-"


class CheckpointMismatchError(AsterUserError):
    """A checkpoint cannot be restored into this run's setup."""


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_rng_states() -> list[dict]:
    """Every rank's RNG states, indexed by rank (collective: every rank must call it)."""
    _, world = _world()
    if world == 1:
        return [rng_state()]
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, rng_state())
    return gathered


def restore_rank_rng(saved, where: Path) -> None:
    """This rank's entry of a per-rank list (a single dict: checkpoints written before RNG
    states were saved per rank, restored on every rank)."""
    rank, world = _world()
    if isinstance(saved, dict):
        set_rng_state(saved)
        return
    if len(saved) != world:
        log.warning("%s holds RNG states of %d ranks, this run has %d: rank %d restores rank "
                    "%d's (the resumed run will not reproduce the original exactly)",
                    where, len(saved), world, rank, rank % len(saved))
    set_rng_state(saved[rank % len(saved)])


def _barrier() -> None:
    if _world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def _model_state(model) -> dict:
    from aster.train.parallel import full_state_dict

    return full_state_dict(model)


def _optim_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))


def save_checkpoint(ckpt_dir: str | Path, step: int, *, model, optimizer=None, scheduler=None,
                    extra: dict | None = None, keep_last: int = 2, is_main: bool = True) -> Path:
    """Write `ckpt_dir/step-<step>/` atomically and prune to the newest `keep_last`. Every rank
    must call it (gathering state is collective): rank 0 writes the full model, optimizer and
    scheduler state plus every rank's RNG states; a DeepSpeed engine (`model`) writes its own
    sharded files, every rank its shards."""
    from aster.train.ds_engine import is_engine

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".tmp-{PREFIX}{step:08d}"
    if is_engine(model):
        state = {"engine": "deepspeed", "rng": _save_engine_shards(model, tmp, is_main)}
    else:
        state = {"model": _model_state(model),
                 "optimizer": _optim_state(model, optimizer) if optimizer is not None else None,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "rng": all_rng_states()}
    if is_main:
        _write(state, tmp, final, {"step": step, **(extra or {})}, fresh=not is_engine(model))
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.debug("checkpoint %s written", final)
    _barrier()  # on return the checkpoint is complete for every rank
    return final


def _write(state: dict, tmp: Path, final: Path, meta: dict, fresh: bool) -> None:
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _save_engine_shards(engine, tmp: Path, is_main: bool) -> list[dict]:
    """The engine's shards into `tmp` (made by rank 0 first); returns every rank's RNG."""
    from aster.train.ds_engine import save_engine

    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    save_engine(engine, tmp)
    rngs = all_rng_states()
    _barrier()  # every rank's shards are on disk before rank 0 renames the directory
    return rngs


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
    """Restore model/optimizer/scheduler and this rank's RNG from `path`; returns its meta
    dict. Every rank must call it."""
    from aster.train.ds_engine import is_engine, load_engine

    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    written_by_engine = state.get("engine") == "deepspeed"
    if written_by_engine != is_engine(model):
        raise CheckpointMismatchError(
            f"{path} was written {'with' if written_by_engine else 'without'} "
            "distributed.strategy=deepspeed; resume with the strategy that wrote it")
    if written_by_engine:
        load_engine(model, path)
    else:
        _load_full_state(state, model, optimizer, scheduler)
    restore_rank_rng(state["rng"], path)
    return json.loads((path / "meta.json").read_text())


def _load_full_state(state: dict, model, optimizer, scheduler) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_model_state_dict(model, state["model"], options=opts)
    if optimizer is not None and state["optimizer"] is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
