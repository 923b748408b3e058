"""The `aster` command: help, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aster.cli import COMMANDS, build_parser, main


def test_every_subcommand_has_useful_help(capsys):
    parser = build_parser()
    help_text = parser.format_help()
    for name in ("train", "sft", "rl", "eval", "sandbox", "parity", "config"):
        assert name in COMMANDS and name in help_text
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"aster {name}" in out and len(out.splitlines()) > 3


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_config_show_resolves_overrides(capsys):
    assert main(["config", "show", "qwen3-4b", "rl.lr=2e-6"]) == 0
    out = capsys.readouterr().out
    assert "lr: 2.0e-06" in out and "Qwen/Qwen3-4B-Thinking-2507" in out
    assert main(["config", "show", "sft.epochs=2"]) == 0  # overrides without a name: tiny
    assert "epochs: 2" in capsys.readouterr().out


def test_config_error_is_one_line_and_exit_2(capsys):
    assert main(["config", "show", "tiny", "rl.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "aster: error: unknown config key 'rl.lrr'; did you mean 'rl.lr'?"


def test_missing_device_fails_fast_with_exit_2():
    proc = subprocess.run([sys.executable, "-m", "aster.cli", "sft", "--device", "npu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aster: error: --device npu:")
    assert "pip install" in lines[0]


# Every command that takes KEY=VALUE overrides: (command words, an option and its value, the
# option's dest).
OVERRIDE_COMMANDS = [
    (["train"], ["-o", "DIR"], "output_dir"), (["sft"], ["-o", "DIR"], "output_dir"),
    (["rl"], ["--stage", "rl_stage2"], "stage"), (["eval"], ["--k", "4"], "k"),
    (["data", "synthetic", "OUT"], ["-o", "DIR"], "output_dir"),
    (["data", "synth", "P.jsonl", "OUT.jsonl"], ["--samples", "2"], "samples"),
    (["config", "show"], ["--config", "tiny"], "config"),
    (["sandbox", "run"], ["--config", "tiny"], "config"),
    (["sandbox", "bench"], ["--config", "tiny"], "config"),
]


@pytest.mark.parametrize("words, option, dest", OVERRIDE_COMMANDS,
                         ids=lambda w: " ".join(w[:2]) if isinstance(w, list) else "")
def test_overrides_are_accepted_anywhere(words, option, dest):
    from aster.cli import parse_args

    # `aster rl a.b=1 -o DIR c.d=2`: before, between and after the options
    args = parse_args([*words, "run.seed=1", *option, "rl.lr=2e-6", "model.path=/ckpt=v2"])
    assert args.overrides == ["run.seed=1", "rl.lr=2e-6", "model.path=/ckpt=v2"]
    assert str(getattr(args, dest)) == option[1]


def test_an_option_value_with_an_equals_sign_stays_the_options():
    from aster.cli import parse_args

    args = parse_args(["rl", "a.b=1", "-o", "runs/lr=2e-6", "c=2", "--filter-out", "x=y.jsonl"])
    assert args.output_dir == "runs/lr=2e-6" and args.filter_out == "x=y.jsonl"
    assert args.overrides == ["a.b=1", "c=2"]


def test_eval_data_list_and_overrides_mix():
    from aster.cli import parse_args

    args = parse_args(["eval", "--data", "a.parquet", "eval.k=4", "b.jsonl", "--k", "2",
                       "rollout.engine=hf"])
    assert args.data == ["a.parquet", "b.jsonl"] and args.k == 2
    assert args.overrides == ["eval.k=4", "rollout.engine=hf"]


@pytest.mark.parametrize("words, option", [(w, o) for w, o, _ in OVERRIDE_COMMANDS
                                           if w != ["sandbox", "bench"]],
                         ids=lambda w: " ".join(w[:2]) if isinstance(w, list) else "")
def test_every_job_command_hands_late_overrides_to_the_config(words, option, capsys):
    # `aster rl a=1 -o DIR b=2` used to stop in argparse ("unrecognized arguments: b=2");
    # now b=2 reaches the config loader, whose one-line error names it.
    assert main([*words, "run.seed=1", *option, "bogus.key=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'bogus'" in err and "unrecognized" not in err
