"""`aster sandbox`: try the stateful Python sandbox by hand (run) or measure it (bench)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from aster.commands.common import add_config_args
from aster.config import load_config
from aster.errors import AsterUserError
from aster.sandbox import SandboxPool, format_tool_response


def register(sub) -> None:
    parser = sub.add_parser("sandbox", help="Run code in, or benchmark, the stateful Python sandbox.",
                            description="Run code in, or benchmark, the stateful Python sandbox.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="a REPL, or a file, through one sandbox session")
    run.add_argument("file", nargs="?", help="a Python file to run as one cell (default: REPL)")
    add_config_args(run)
    run.set_defaults(func=run_command)
    bench = actions.add_parser("bench", help="latency, throughput and memory of the sandbox")
    bench.add_argument("--full", action="store_true", help="more iterations (slower)")
    add_config_args(bench)
    bench.set_defaults(func=bench_command)


def sandbox_config(args: argparse.Namespace):
    """The `sandbox:` section of --config with the overrides applied."""
    return load_config(args.config, args.overrides).sandbox


def run_command(args: argparse.Namespace) -> int:
    """Run FILE as one cell, or read cells from a REPL (a blank line ends a cell)."""
    if args.file and "=" in args.file and not os.path.exists(args.file):
        args.overrides, args.file = [args.file, *args.overrides], None  # KEY=VALUE, no file
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                code = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise AsterUserError(f"cannot read {args.file}: {exc}; pass a UTF-8 Python "
                                 "file") from None
    cfg = sandbox_config(args)
    with SandboxPool(cfg) as pool, pool.session() as session:
        if args.file:
            result = session.run(code)
            print(format_tool_response(result, empty=""), end="")
            return 0 if result.ok else 1
        print("aster sandbox: one session; a blank line runs the cell; Ctrl-D quits",
              file=sys.stderr)
        while True:
            code = _read_cell()
            if code is None:
                return 0
            if code.strip():
                result = session.run(code)
                print(format_tool_response(result, empty=""), end="")
                print(f"[{result.status} {result.duration_s * 1e3:.1f} ms]", file=sys.stderr)


def _read_cell() -> str | None:
    lines = []
    while True:
        try:
            line = input(">>> " if not lines else "... ")
        except EOFError:
            return "\n".join(lines) if lines else None
        if not line.strip() and lines:
            return "\n".join(lines)
        lines.append(line)
        if len(lines) == 1 and line.strip() and not line.rstrip().endswith(":"):
            return line  # a one-line statement runs at once, as in the Python REPL


def bench_script() -> Path:
    """bench/bench_sandbox.py of a source checkout: the one this package was installed from
    (editable), or the current directory's. It is not part of the installed package."""
    candidates = [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        path = root / "bench" / "bench_sandbox.py"
        if path.is_file() and (root / "aster" / "sandbox").is_dir():
            return path
    raise AsterUserError("`aster sandbox bench` runs bench/bench_sandbox.py, which is not "
                         "installed with the package; run it inside a source checkout of aster "
                         "(or `python bench/bench_sandbox.py` there)")


def bench_command(args: argparse.Namespace) -> int:
    """Print the same table as bench/bench_sandbox.py."""
    path = bench_script()
    if importlib.util.find_spec("dill") is None:
        raise AsterUserError("`aster sandbox bench` needs dill for its baseline (a fresh python "
                             "that pickles the session state each call); pip install dill, or "
                             "scripts/install.sh dev")
    spec = importlib.util.spec_from_file_location("aster_bench_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    format_table, run = module.format_table, module.run
    print(format_table(run(None, quick=not args.full, config=sandbox_config(args))))
    return 0
