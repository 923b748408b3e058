"""Every config key does something, and every value is checked when the config loads.

- No dead keys: every field of every config dataclass must be read during representative runs
  (tests/config_reads_main.py: every job command on the shrunken tiny config, DDP / FSDP2 /
  DeepSpeed on 2 gloo ranks, tool calls through the agent loop, the vLLM engine's args), as
  recorded by tests/config_reads.py, or be listed below with the reason it is not. A config
  section validating itself is not a use; a name read elsewhere for something else is not
  either (the old name-matching walk could never report `seed`, `temperature` or `name`).
- Numbers: every numeric key rejects nan, inf and a far out-of-range value with a one-line
  ConfigError; `aster train` with such a value exits 2 with one line before anything loads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from aster.config import AsterConfig, load_config
from aster.errors import ConfigError
from tests import config_reads
from tests.train.ranks import free_port

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "config_reads_main.py"

# Keys the runs here cannot reach (hardware-only paths), with the reason. Kept empty: every
# key is read on a CPU box by the runs above.
HARDWARE_ONLY: dict[str, str] = {}
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


def _run(*args, timeout=300):
    proc = subprocess.run([sys.executable, str(RUNNER), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def keys_read(tmp_path_factory):
    """The config keys the representative runs read (about a minute on a 2-core box)."""
    from aster.tiny_model import build_tiny_model

    work = tmp_path_factory.mktemp("config_reads")
    reads = work / "reads.txt"
    (work / "runs_dir").mkdir()
    _run("runs", reads, work / "runs_dir")
    strategies = ["ddp", "fsdp2"]
    if importlib.util.find_spec("deepspeed") is not None:
        strategies += ["deepspeed-1", "deepspeed-3"]
    model = build_tiny_model(work / "model", load_config().model.tiny, seed=0)
    (work / "dist").mkdir()
    _run("dist", reads, free_port(), work / "dist", model, ",".join(strategies))
    return config_reads.keys_read(reads)


def test_every_config_key_is_read_by_a_representative_run(keys_read):
    dead = [key for key, _, _ in config_keys()
            if key not in keys_read and key not in HARDWARE_ONLY and key not in PENDING]
    assert not dead, f"config keys no run reads (wire or remove them): {dead}"


def test_allowlisted_keys_are_still_unread(keys_read):
    keys = {key for key, _, _ in config_keys()}
    stale = [k for k in {**HARDWARE_ONLY, **PENDING} if k not in keys or k in keys_read]
    assert not stale, f"listed as unread but read now (or gone): {stale}"


def test_the_recorder_ignores_validation_and_serialisation(tmp_path):
    """In a fresh process: loading, validating, copying and dumping a config reads nothing;
    one attribute read is one key."""
    reads = tmp_path / "reads.txt"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests import config_reads\n"
            f"config_reads.install({str(reads)!r})\n"
            "import dataclasses\nfrom aster.config import load_config\n"
            "cfg = load_config(None, ['rollout.temperature=0.5'])\n"
            "cfg.to_yaml(); repr(cfg); dataclasses.replace(cfg.rollout, top_p=0.9)\n"
            "open(sys.argv[1], 'w').write(open(" + repr(str(reads)) + ").read() "
            "if __import__('os').path.exists(" + repr(str(reads)) + ") else '')\n"
            "cfg.eval.seed\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "before.txt")], check=True,
                   cwd=ROOT, timeout=60)
    leaves = {key for key, _, _ in config_keys()}
    assert config_reads.keys_read(tmp_path / "before.txt") & leaves == set()
    assert config_reads.keys_read(reads) & leaves == {"eval.seed"}


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
    ("model.tiny.init_std=0", "model.tiny.init_std=0.0 must be in (0, 1]"),
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
