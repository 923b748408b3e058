"""YAML configs (configs/) -> typed dataclasses, with `a.b=c` overrides and clear errors.

A config file may name another as its `base:` (a shipped name such as `qwen3-4b`, or a path
relative to the file); its keys are merged over the base's. Each section is the config class of
the component that owns it (SandboxConfig lives with the sandbox, RLConfig with the trainer...).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from aster.backend import DEVICE_CHOICES
from aster.configio import apply_overrides, build_dataclass, deep_merge, to_dict
from aster.data.config import DataConfig
from aster.errors import ConfigError
from aster.eval import EvalConfig
from aster.rollout.config import RolloutConfig
from aster.rollout.templates import check_template_choice
from aster.sandbox.config import SandboxConfig
from aster.tiny_model import TinyModelConfig
from aster.train.config import CheckpointConfig, DistributedConfig, RLConfig, SFTConfig

DEFAULT_CONFIG = "tiny"
STAGES = ("sft", "rl_stage1", "filter", "rl_stage2", "eval")


@dataclass
class RunConfig:
    """Where and how the run goes."""

    name: str = "run"
    output_dir: str | None = None  # default: runs/<name>-<timestamp>
    device: str = "auto"  # one of aster.backend.DEVICE_CHOICES
    seed: int = 0
    deterministic: bool = False  # the backend's determinism settings (slower)
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"run.seed={self.seed!r} must be >= 0")
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"run.device={self.device!r} must be one of {', '.join(DEVICE_CHOICES)}")
        for stage in self.stages:
            if stage not in STAGES:
                raise ValueError(f"run.stages contains {stage!r}; valid stages: "
                                 f"{', '.join(STAGES)}")


@dataclass
class ModelConfig:
    """The policy model: a Hugging Face directory or hub name, or the tiny in-process one."""

    path: str | None = None  # None: build the tiny model (model.tiny) into the run directory
    # the compute dtype (auto: bf16 where supported, fp32 on CPU): forward/backward, the rollout
    # engine's weights and the saved models; master weights and optimizer state are always fp32
    # (aster.train.precision). float16 serves eval only (training needs loss scaling).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str = "auto"  # auto: the backend's choice
    gradient_checkpointing: bool = False
    fused_ops: bool = False  # vendor fused RMSNorm/RoPE/SwiGLU (Ascend)
    # the template SFT, RL and eval render with: "" the checkpoint's own; "hermes" (shipped) or
    # a Jinja file for a checkpoint whose template cannot show the tool (aster.rollout.templates)
    chat_template: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self):
        check_template_choice(self.chat_template)


@dataclass
class BackendConfig:
    """Backend choices that are not the device itself."""

    kernel_impl: Literal["auto", "reference", "chunked", "triton"] = "auto"


@dataclass
class LoggingConfig:
    """The console (rank 0) and metric files; every step of every stage goes to metrics.jsonl
    (and TensorBoard) whatever the console shows."""

    log_every: int = 1  # RL: a console line every N steps
    sft_log_every: int = 0  # SFT: a summary line (means) every N steps; 0: about 20 per run
    tensorboard: bool = True
    # SFT's progress bar (with the loss): auto = when stderr is a terminal; true forces it
    # (e.g. a log file followed with tail -f); false hides it
    progress: bool | Literal["auto"] = "auto"

    def __post_init__(self):
        if self.log_every < 1:
            raise ValueError(f"logging.log_every={self.log_every} must be >= 1")
        if self.sft_log_every < 0:
            raise ValueError(f"logging.sft_log_every={self.sft_log_every} must be >= 0 (0: "
                             "about 20 summary lines per SFT run)")


@dataclass
class AsterConfig:
    """The whole run: one section per component."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        # Every trajectory in flight holds its sandbox session to the end: with fewer sessions
        # the rest wait, and a long trajectory makes them give up (sandbox_unavailable).
        sessions, concurrency = self.sandbox.max_sessions, self.rollout.max_concurrency
        if sessions < concurrency:
            raise ValueError(f"sandbox.max_sessions={sessions} is below rollout.max_concurrency="
                             f"{concurrency} (each trajectory in flight holds a session): set "
                             f"sandbox.max_sessions>={concurrency} or lower "
                             "rollout.max_concurrency")

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def shipped_configs() -> list[str]:
    """Names of the configs that ship with aster (configs/*.yaml)."""
    root = importlib.resources.files("aster.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str, base_dir: Path | None = None) -> tuple[dict, Path | None]:
    """Read a config by path (absolute, relative to base_dir or cwd) or shipped name."""
    candidates = [Path(source)]
    if base_dir is not None and not Path(source).is_absolute():
        candidates.insert(0, base_dir / source)
    for path in candidates:
        if path.is_file():
            return _parse(path.read_text(), str(path)), path.parent
    name = source[:-5] if source.endswith(".yaml") else source
    resource = importlib.resources.files("aster.configs") / f"{Path(name).name}.yaml"
    if "/" not in name and resource.is_file():
        return _parse(resource.read_text(), f"configs/{name}.yaml"), None
    raise ConfigError(f"config {source!r} not found: give a YAML path or one of "
                      f"{', '.join(shipped_configs())}")


def _parse(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    return data


def load_raw(source: str | None, _seen: tuple = ()) -> dict:
    """The merged dict of a config and its `base:` chain (no overrides, not validated)."""
    data, base_dir = _read_yaml(source or DEFAULT_CONFIG)
    base = data.pop("base", None)
    if base is None:
        return data
    if base_dir is not None and not Path(base).is_absolute() and (base_dir / base).is_file():
        base = str(base_dir / base)
    if base in (*_seen, source):
        raise ConfigError(f"config {source!r}: `base:` chain loops through {base!r}")
    return deep_merge(load_raw(base, (*_seen, source)), data)


def load_config(source: str | None = None, overrides: list[str] | None = None) -> AsterConfig:
    """Load a config by path or shipped name (default: the embedded tiny one) with overrides."""
    data = apply_overrides(load_raw(source), list(overrides or []))
    return build_dataclass(AsterConfig, data)
