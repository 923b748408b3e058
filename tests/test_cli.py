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
