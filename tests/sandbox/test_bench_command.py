"""`aster sandbox bench` finds bench/ in a source checkout, or says in one line that it needs one."""

from __future__ import annotations

from pathlib import Path

import aster.commands.sandbox as sandbox_cmd
from aster.cli import main

REPO = Path(__file__).resolve().parents[2]


def _as_if_installed(monkeypatch, tmp_path):
    """The command module as a wheel would place it: site-packages/aster/commands/."""
    fake = tmp_path / "site-packages" / "aster" / "commands" / "sandbox.py"
    monkeypatch.setattr(sandbox_cmd, "__file__", str(fake))


def test_installed_package_outside_a_checkout_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    _as_if_installed(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["sandbox", "bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source checkout" in err


def test_installed_package_run_inside_a_checkout_finds_the_bench(monkeypatch, tmp_path):
    _as_if_installed(monkeypatch, tmp_path)
    monkeypatch.chdir(REPO)
    assert sandbox_cmd.bench_script() == REPO / "bench" / "bench_sandbox.py"
