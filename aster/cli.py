"""The `aster` command: one subcommand per module in aster/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from aster import __version__
from aster.backend import DEVICES_BLURB, EXAMPLE_CLUSTER_RUN
from aster.errors import AsterUserError

# Order is the order `aster --help` lists them in.
COMMANDS = ("train", "sft", "rl", "eval", "data", "sandbox", "parity", "config", "plot")

DESCRIPTION = f"""\
aster trains language models to reason with a Python tool (the ASTER recipe): cold-start SFT
on interaction-dense tool trajectories, two-stage GRPO with a stateful Python sandbox, avg@k
evaluation. {DEVICES_BLURB}

Start with `aster train` (the embedded tiny default on CPU), or
`{EXAMPLE_CLUSTER_RUN}` on a GPU node. Every job command takes --config and
KEY=VALUE overrides; `aster config show` prints what a run will use."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aster", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aster {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"aster.commands.{name}").register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    """Console logging; under torchrun only rank 0 logs below ERROR (every rank loads the same
    data and would repeat each warning once per rank)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if os.environ.get("RANK", "0") not in ("", "0"):
        logging.getLogger("aster").setLevel(logging.ERROR)


def check_device(args: argparse.Namespace) -> None:
    """Fail fast, before any work, when an explicit --device is not usable here."""
    device = getattr(args, "device", None)
    if device not in (None, "auto"):
        from aster.backend import resolve_device_name

        resolve_device_name(device)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        check_device(args)
        return int(args.func(args) or 0)
    except AsterUserError as exc:
        print(f"aster: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("aster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
