"""The parallel strategy as one object per kind (`distributed.strategy`), behind a registry
as aster/backend.py keeps devices: none.py, ddp.py, fsdp2.py, deepspeed.py.

A Strategy wraps the policy and owns its precision (the compute dtype its forward runs in,
resolved once by aster.train.precision.compute_dtype), shards the frozen reference policy,
builds the stage's Updater (backward, clip, NaN guard, step), streams the full weights in the
compute dtype (`weight_buckets`) and saves and loads the model/optimizer part of a checkpoint
(aster.train.checkpoint does the directory, side files and atomic rename). The base class is
the single-process behaviour; a kind overrides what differs. Adding one: a file with a
subclass and a line in _REGISTRY (or `register_strategy` from outside the package), see
docs/distributed.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from aster.errors import ConfigError
from aster.rollout.engine import state_dict_of
from aster.train.strategy.dcp_io import dcp_state, load_dcp, quiet
from aster.train.update import Updater

# name -> "module:Class"; imported lazily, so asking for fsdp2 never imports DeepSpeed
_REGISTRY: dict[str, str] = {
    "none": "aster.train.strategy.none:NoneStrategy",
    "ddp": "aster.train.strategy.ddp:DDPStrategy",
    "fsdp2": "aster.train.strategy.fsdp2:FSDP2Strategy",
    "deepspeed": "aster.train.strategy.deepspeed:DeepSpeedStrategy",
}
_LOADED: dict[str, type] = {}


def register_strategy(name: str, target) -> None:
    """Make `distributed.strategy=<name>` build `target` (a Strategy subclass or its
    "module:Class" path)."""
    if isinstance(target, str):
        _REGISTRY[name] = target
        _LOADED.pop(name, None)
    else:
        _REGISTRY[name] = f"{target.__module__}:{target.__qualname__}"
        _LOADED[name] = target


def strategy_names() -> tuple[str, ...]:
    return ("auto", *_REGISTRY)


def check_strategy_name(name: str) -> None:
    if name not in strategy_names():
        raise ConfigError(f"distributed.strategy={name!r} is not known; use one of "
                          f"{', '.join(strategy_names())}")


def strategy_class(name: str) -> type[Strategy]:
    """The class registered under `name` ("auto": fsdp2's, what it is with several ranks)."""
    name = "fsdp2" if name == "auto" else name
    check_strategy_name(name)
    if name not in _LOADED:
        module, cls = _REGISTRY[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)
    return _LOADED[name]


def resolve_strategy(name: str, world_size: int) -> str:
    """The strategy a run uses: `auto` is fsdp2 with more than one rank; with one rank a
    strategy with nothing to split runs as none."""
    name = "fsdp2" if name == "auto" else name
    if world_size == 1 and strategy_class(name).single_rank_as_none:
        return "none"
    return name


def build_strategy(dist_cfg, backend, compute_dtype) -> Strategy:
    """The run's Strategy from its `distributed:` section, the backend and the compute dtype."""
    name = resolve_strategy(dist_cfg.strategy, backend.dist.world_size)
    return strategy_class(name)(backend, dist_cfg, compute_dtype)


def unwrap(model):
    """The single-device module under a DDP wrapper or DeepSpeed engine (FSDP2 shards in
    place)."""
    return getattr(model, "module", model)


def owner_of(model) -> type[Strategy]:
    """The class whose wrapper `model` is (only imported kinds can have made one)."""
    for cls in list(_LOADED.values()):
        if cls.owns(model):
            return cls
    return Strategy


def full_state_dict(model, cpu_offload: bool = True) -> dict:
    """Every weight of `model` in full under any strategy (FSDP2 shards and ZeRO-3 partitions
    gathered); collective: every rank must call it, rank 0 gets the whole state (with
    cpu_offload, FSDP2 gives the other ranks an empty dict)."""
    return owner_of(model).gather_state(model, cpu_offload)


class Strategy:
    """One process, the model as it is (the base of every kind)."""

    name = "none"
    checkpoint_format = "dcp"  # aster.train.checkpoint's directory for save_state's files
    single_rank_as_none = True  # one rank has nothing to split: run as none

    @staticmethod
    def memory_shards(zero_stage: int, devices: int) -> tuple[int, int, int]:
        """How many ways the kind splits (parameters, gradients, optimizer state) over
        `devices`: what `aster plan` divides each by. Every rank holds everything here."""
        return 1, 1, 1

    def __init__(self, backend, dist_cfg, compute_dtype):
        self.backend, self.dist_cfg, self.compute_dtype = backend, dist_cfg, compute_dtype
        self.world_size = backend.dist.world_size
        self.hf_model = None  # the Hugging Face module under the policy wrap() was given

    # ---- wrapping ---------------------------------------------------------------------
    def wrap(self, policy):
        """The policy (a single-device PolicyForward, fp32 masters, on the backend's device)
        ready for data parallel; gradients are averaged over ranks."""
        self.hf_model = getattr(policy, "model", policy)
        return self._wrap(policy)

    def _wrap(self, policy):
        return policy

    def wrap_reference(self, policy):
        """A frozen reference policy, held like the policy where that saves memory; the
        others keep full parameters on every rank (nothing to synchronise)."""
        return policy

    @classmethod
    def check_config(cls, cfg) -> None:
        """One-line errors, before anything loads, for what this kind cannot do."""

    @classmethod
    def owns(cls, model) -> bool:
        """True for a module this kind's wrapper made and the base gathering cannot read."""
        return False

    # ---- the update ---------------------------------------------------------------------
    def updater(self, policy, optimizer, scheduler, max_grad_norm: float):
        """The stage's Updater over the wrapped `policy` (backward, clip with the NaN guard,
        step, schedule); its `.policy` is what the stage trains."""
        return Updater(policy, optimizer, scheduler, max_grad_norm, self.world_size)

    # ---- weights out ----------------------------------------------------------------------
    @classmethod
    def gather_state(cls, model, cpu_offload: bool = True) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(unwrap(model), options=StateDictOptions(
            full_state_dict=True, cpu_offload=cpu_offload))

    def full_tensors(self, model) -> Iterator[tuple[str, object]]:
        """(name, full tensor) of every weight of the Hugging Face `model`, one at a time
        (collective where the kind shards: every rank iterates the same names)."""
        yield from state_dict_of(model).items()

    def weight_buckets(self, bucket_bytes: int, model=None) -> Iterator[list[tuple[str, object]]]:
        """The full weights in the compute dtype as buckets of at most `bucket_bytes` (a
        larger tensor is a bucket of its own): one full tensor is gathered and cast at a
        time, so no full-precision copy of the model ever exists. `model`: the Hugging Face
        module (default: the one under the policy this strategy wrapped)."""
        model = self.hf_model if model is None else model
        bucket, size = [], 0
        for name, tensor in self.full_tensors(model):
            if tensor.is_floating_point() and tensor.dtype != self.compute_dtype:
                tensor = tensor.to(self.compute_dtype)
            nbytes = tensor.numel() * tensor.element_size()
            if bucket and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.append((name, tensor))
            size += nbytes
        if bucket:
            yield bucket

    # ---- checkpoints ------------------------------------------------------------------------
    @classmethod
    def save_state(cls, model, optimizer, directory) -> None:
        """Model and optimizer through torch.distributed.checkpoint: each rank writes its own
        shards (replicated tensors: each written once, by one of the ranks); collective."""
        import torch.distributed.checkpoint as dcp

        with quiet():
            dcp.save(dcp_state(model, optimizer), storage_writer=dcp.FileSystemWriter(
                str(directory)))

    @classmethod
    def load_state(cls, model, optimizer, directory) -> None:
        """Read into the strategy's own tensors: each rank reads the bytes of its shards
        only, whatever world size and kind wrote them; collective."""
        load_dcp(model, optimizer, directory)
