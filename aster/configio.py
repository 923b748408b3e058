"""Turning nested dicts (YAML + `a.b=c` overrides) into typed dataclasses, and back.

Errors are ConfigError with one line that names the full dotted key, the bad value, and for
unknown keys the closest valid key. Every float must be finite (the generic check); each
section's __post_init__ checks its own ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

import yaml

from aster.errors import ConfigError

# Keys earlier versions of aster read, and what replaced them: an old config gets this instead
# of a closest-spelling guess.
REPLACED_KEYS = {
    "rl.micro_batch_size": "it was replaced by rl.max_tokens_per_micro_batch (tokens per packed "
                           "forward per rank, not trajectories; the tiny config uses 4096)",
    "checkpoint.save_final_model": "it was removed (nothing read it): each stage always writes "
                                   "its final model",
    "backend.peak_tflops": "it was removed (nothing read it): MFU uses the backend's peak table",
}


# Other trainers' names for aster's keys (transformers' TrainingArguments, verl): a spelling
# guess would point elsewhere (learning_rate is closer to decay_ratio than to lr)
OTHER_NAMES = {"learning_rate": "lr", "lr_scheduler_type": "lr_schedule",
               "num_train_epochs": "epochs", "per_device_train_batch_size": "micro_batch_size"}


def _suggest(name: str, valid: list[str], prefix: str) -> str:
    if f"{prefix}{name}" in REPLACED_KEYS:
        return f"; {REPLACED_KEYS[prefix + name]}"
    if OTHER_NAMES.get(name) in valid:
        return f"; did you mean '{prefix}{OTHER_NAMES[name]}' (aster's name for {name})?"
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; valid keys here: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the few safe cases (int->float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"config key '{key}'={value!r} must be one of: "
            + ", ".join(_type_name(a) for a in args))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{key}'={value!r} must be one of "
                              f"{', '.join(repr(a) for a in allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}'={value!r} must be a list")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}'={value!r} must be a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}'={value!r} must be true or false")
    if tp is float:
        number = _float(value)
        if number is None:
            raise ConfigError(f"config key '{key}'={value!r} must be a number")
        if not math.isfinite(number):  # no key means anything by nan or inf
            raise ConfigError(f"config key '{key}'={value!r} must be a finite number")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}'={value!r} must be an integer")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}'={value!r} must be a string")
    return value


def _float(value: Any) -> float | None:
    """value as a float, or None when it is not a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML reads "3e-5" (no dot), "nan" and "inf" as strings
        try:
            return float(value)
        except ValueError:
            return None
    return None


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, recursively; unknown keys are errors."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    dot = f"{prefix}." if prefix else ""
    kwargs = {}
    for name, value in data.items():
        if name not in valid:
            raise ConfigError(f"unknown config key '{dot}{name}'" + _suggest(str(name), valid, dot))
        kwargs[name] = _coerce(_over_default(cls, name, value), hints[name], f"{dot}{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # __post_init__ names the key either fully (`rl.lr=...`) or bare (`lr=...`).
        msg = str(exc)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{dot}{msg}") from None


def _over_default(cls: type, name: str, value: Any) -> Any:
    """A partial mapping for a nested dataclass field is merged over that field's default, so
    `rl.stage2.epochs=2` keeps stage 2's other defaults instead of the stage class's."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    return deep_merge(to_dict(default), value) if dataclasses.is_dataclass(default) else value


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts / lists (for YAML, JSON and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, merging nested mappings, without mutating either."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], parsed c); values are YAML scalars/lists (1e-6, true, [a, b])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.subkey=value "
                          "(e.g. rl.lr=1e-6)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` strings to a nested dict (validation happens when building)."""
    out = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        nested: dict = value
        for part in reversed(path):
            nested = {part: nested}
        out = deep_merge(out, nested)
    return out
