"""`aster sandbox`: try the stateful Python sandbox by hand (run) or measure it (bench)."""

from __future__ import annotations

from aster.commands.common import add_config_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("sandbox", help="Run code in, or benchmark, the stateful Python sandbox.",
                            description="Run code in, or benchmark, the stateful Python sandbox.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="a REPL, or a file, through one sandbox session")
    run.add_argument("file", nargs="?", help="a Python file to run as one cell (default: REPL)")
    add_config_args(run)
    run.set_defaults(func=not_implemented("sandbox run", "sandbox"))
    bench = actions.add_parser("bench", help="latency, throughput and memory of the sandbox")
    add_config_args(bench)
    bench.set_defaults(func=not_implemented("sandbox bench", "sandbox"))
