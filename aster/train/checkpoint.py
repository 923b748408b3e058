"""Sharded, atomic checkpoints for resume.

One checkpoint is a directory `step-<N>/`:

    dcp/             model + optimizer through torch.distributed.checkpoint (DCP): each rank
                     writes only its own shards (FSDP2) or its share of the replicated tensors
                     (DDP / none) and, on resume, reads only the bytes its new shards need, so
                     a run saved on N ranks resumes on M ranks
    <format>/        instead of dcp/, a strategy's own format (Strategy.checkpoint_format and
                     save_state / load_state: DeepSpeed's engine files)
    rank-<R>.pt      rank R's small state: RNG states, scheduler, step (resume bitwise on CPU)
    meta.json        written last: step, format, world size and the stage's extras

It is written into `.tmp-step-<N>/` and renamed into place once every rank's files are on disk,
so a killed run leaves the previous checkpoint or the new one, never half of one (a directory
without meta.json is not a checkpoint). Every rank must see the same file system.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from aster.errors import AsterUserError
from aster.train.strategy import owner_of
from aster.train.strategy.dcp_io import read_full_state

log = logging.getLogger("aster")

PREFIX = "step-"
SHARDS = "dcp"  # the directory of the DCP format (Strategy.checkpoint_format) in a checkpoint


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
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def _side_file(path: Path, rank: int) -> Path:
    return path / f"rank-{rank:05d}.pt"


def _save_side_file(tmp: Path, step: int, scheduler) -> None:
    """This rank's RNG states, scheduler and step: a few KB, restored bitwise."""
    rank, _ = _world()
    state = {"rng": rng_state(), "step": step,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(state, _side_file(tmp, rank))


def _load_side_file(path: Path, saved_world: int) -> dict:
    """This rank's side file; a rank the saving run did not have takes rank % saved_world's
    (the scheduler and step are the same on every rank; its RNG streams are not)."""
    rank, world = _world()
    if world != saved_world:
        log.warning("%s was written by %d ranks, this run has %d: rank %d restores rank %d's "
                    "RNG states (sampling will not repeat the original run's exactly)",
                    path, saved_world, world, rank, rank % saved_world)
    return torch.load(_side_file(path, rank % saved_world), map_location="cpu",
                      weights_only=False)


def save_checkpoint(ckpt_dir: str | Path, step: int, *, model, optimizer=None, scheduler=None,
                    extra: dict | None = None, keep_last: int = 2, is_main: bool = True) -> Path:
    """Write `ckpt_dir/step-<step>/` atomically and prune to the newest `keep_last`. Every rank
    must call it (collective): each writes its own model/optimizer shards (a DeepSpeed engine,
    `model`, its own format) and its side file; rank 0 writes meta.json and renames."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".tmp-{PREFIX}{step:08d}"
    if is_main:  # a killed earlier attempt may have left a partial temp directory
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    kind = owner_of(model)  # the strategy whose wrapper `model` is writes its own format
    kind.save_state(model, optimizer, tmp / kind.checkpoint_format)
    _save_side_file(tmp, step, scheduler)
    _barrier()  # every rank's files are on disk before rank 0 completes the checkpoint
    if is_main:
        meta = {"step": step, "format": kind.checkpoint_format,
                "world_size": _world()[1], **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.debug("checkpoint %s written", final)
    _barrier()  # on return the checkpoint is complete for every rank
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


def read_meta(path: str | Path) -> dict:
    """meta.json of a checkpoint; one line when it was written by an older aster."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if "format" not in meta:
        raise CheckpointMismatchError(
            f"{path} is a single-file checkpoint (state.pt) of an older aster; resume it with "
            "that version, or move the directory away to start the stage afresh")
    return meta


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None) -> dict:
    """Restore model/optimizer/scheduler and this rank's RNG from `path` (written on any
    world size, except DeepSpeed's format); returns its meta dict. Every rank must call it."""
    path = Path(path)
    meta = read_meta(path)
    kind = owner_of(model)
    if meta["format"] != kind.checkpoint_format:
        raise CheckpointMismatchError(
            f"{path} holds {meta['format']!r} files, which distributed.strategy={kind.name} "
            "cannot read; resume with the strategy that wrote it")
    kind.load_state(model, optimizer, path / kind.checkpoint_format)
    side = _load_side_file(path, meta["world_size"])
    if scheduler is not None and side["scheduler"] is not None:
        scheduler.load_state_dict(side["scheduler"])
    set_rng_state(side["rng"])
    return meta


def full_checkpoint_state(path: str | Path) -> dict:
    """The whole model and optimizer state of a DCP checkpoint as plain tensors, read in this
    one process (inspection and consolidation; a training run loads through load_checkpoint)."""
    return read_full_state(Path(path) / SHARDS)
