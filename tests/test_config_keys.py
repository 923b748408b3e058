"""Every config key does something, and every value is checked when the config loads.

- No dead keys: each field of every config dataclass must be read by some code path in aster/,
  backends/ or kernels/ (an attribute access on something other than `self`, a getattr or a
  subscript with its name, or an RL objective / penalty field filled from `rl:` by name), or
  be listed below with the reason it is not.
- Numbers: every numeric key rejects nan, inf and a far out-of-range value with a one-line
  ConfigError; `aster train` with such a value exits 2 with one line before anything loads.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from aster.config import AsterConfig, load_config
from aster.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("aster", "backends", "kernels")

# Keys documented but read by no code path yet, with the reason. Kept empty: a key nothing
# reads is a silent no-op.
DOC_ONLY: dict[str, str] = {}
# Keys another branch is wiring right now (the lead removes an entry when it lands).
PENDING: dict[str, str] = {}


def config_keys(cls=AsterConfig, prefix: str = ""):
    """(dotted key, field name, annotation) of every leaf field, recursively."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from config_keys(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.name, tp


def names_read_in_code() -> set[str]:
    """Attribute names read on anything but `self` (a dataclass validating itself is not a
    use), and string constants passed to getattr or used as subscripts, over the sources."""
    read: set[str] = set()
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and not (
                        isinstance(node.value, ast.Name) and node.value.id == "self"):
                    read.add(node.attr)
                elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                    read.add(str(node.slice.value))
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" \
                        and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    read.add(str(node.args[1].value))
    return read


def rl_keys_read_by_objectives() -> set[str]:
    """rl.* keys the objectives and penalties read by field name (PolicyLoss.from_config)."""
    from aster.algo import LOSSES, Penalties
    from aster.train.config import RLConfig

    rl_fields = {f.name for f in dataclasses.fields(RLConfig)}
    names = {f.name for cls in (*LOSSES.values(), Penalties) for f in dataclasses.fields(cls)}
    return {f"rl.{n}" for n in names & rl_fields}


def test_every_config_key_is_read_by_some_code_path():
    read, by_objective = names_read_in_code(), rl_keys_read_by_objectives()
    dead = [key for key, name, _ in config_keys()
            if name not in read and key not in by_objective and key not in DOC_ONLY
            and key not in PENDING]
    assert not dead, f"config keys nothing reads (wire or remove them): {dead}"


def test_documentation_only_keys_are_still_unread():
    read = names_read_in_code()
    keys = {key: name for key, name, _ in config_keys()}
    stale = [k for k in DOC_ONLY if k not in keys or keys[k] in read]
    assert not stale, f"listed as documentation-only but read now (or gone): {stale}"


@pytest.mark.parametrize("override,says", [
    ("checkpoint.save_final_model=false", "it was removed"),
    ("backend.peak_tflops=100", "it was removed"),
    ("rl.micro_batch_size=16", "it was replaced by rl.max_tokens_per_micro_batch"),
])
def test_removed_keys_are_unknown_and_say_what_became_of_them(override, says):
    """An old config names a key aster no longer reads: the error says so, in one line, rather
    than guessing a key of similar spelling (rl.micro_batch_size -> rl.mini_batch_prompts)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert "unknown config key" in str(info.value) and says in str(info.value)
    assert "did you mean" not in str(info.value) and "\n" not in str(info.value)


def _numeric(tp) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args) and typing.get_origin(tp) is not list


NUMERIC = [key for key, _, tp in config_keys() if _numeric(tp)]


def test_the_walk_sees_the_numeric_keys():
    assert {"rollout.temperature", "rl.stage1.max_steps", "rl.kl_coef", "sandbox.timeout_s",
            "model.tiny.vocab_size"} <= set(NUMERIC)
    assert len(NUMERIC) > 80


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf", "1e999", "-1000000"])
def test_every_numeric_key_rejects_non_finite_and_out_of_range(value):
    """nan / inf are never meaningful; every numeric key has a lower bound (ranges per key in
    each section's __post_init__), so a large negative value is refused too."""
    accepted = []
    for key in NUMERIC:
        try:
            load_config(None, [f"{key}={value}"])
        except ConfigError as exc:
            assert "\n" not in str(exc) and key.rsplit(".", 1)[-1] in str(exc), str(exc)
        else:
            accepted.append(key)
    assert not accepted, f"KEY={value} accepted for: {accepted}"


@pytest.mark.parametrize("override,message", [
    ("rollout.temperature=nan", "config key 'rollout.temperature'='nan' must be a finite number"),
    ("rl.stage1.max_steps=-2", "rl.stage1.max_steps=-2 must be >= 0"),
    ("rl.kl_coef=-0.1", "rl.kl_coef=-0.1 must be >= 0"),
    ("rl.loss=ppo", "rl.loss='ppo' must be one of grpo, dr_grpo, gspo, cispo"),
    ("rl.kl_estimator=k4", "rl.kl_estimator='k4' must be one of k1, k2, k3, low_var_kl"),
    ("rl.clip_c=1.1", "rl.clip_c=1.1 (dual clip) must be > 1 + rl.clip_high"),
    ("rollout.top_k=0", "rollout.top_k=0 must be -1 (off) or >= 1"),
    ("sft.adam_betas=[0.9, 1.5]", "sft.adam_betas=[0.9, 1.5] must be two values in [0, 1)"),
    ("model.tiny.num_kv_heads=3", "model.tiny.num_kv_heads=3 must divide model.tiny.num_heads"),
])
def test_bad_values_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["rollout.temperature=nan", "rl.stage1.max_steps=-2"])
def test_cli_exits_2_with_one_line_before_anything_loads(tmp_path, capsys, override):
    from aster.cli import main

    out = tmp_path / "run"
    assert main(["train", "--device", "cpu", "-o", str(out), override]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and override.split("=")[0] in err[0], err
    assert not out.exists()
