"""The `aster` command: one subcommand per module in aster/commands/."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys

from aster import __version__
from aster.backend import DEVICES_BLURB, EXAMPLE_CLUSTER_RUN, resolve_device_name
from aster.errors import AsterUserError

# Order is the order `aster --help` lists them in.
COMMANDS = ("train", "sft", "rl", "eval", "data", "sandbox", "parity", "config", "plan",
            "plot")

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


# `a.b=c`: a config override wherever it stands after the command (argparse alone takes
# positionals only in one run: `aster rl a=1 -o DIR b=2` would leave b=2 unrecognised).
_OVERRIDE_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _leaf_parser(parser: argparse.ArgumentParser, argv: list[str]):
    """The (sub)parser the command words in `argv` select, and where its arguments start."""
    i = 0
    while i < len(argv):
        choices = _subcommands(parser)
        if not choices:
            break
        if argv[i].startswith("-"):
            i += 1
            continue
        if argv[i] not in choices:
            return None, i
        parser, i = choices[argv[i]], i + 1
    return parser, i


def _takes_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """True when `token` is an option of `parser` that takes the next word as its value."""
    options = parser._option_string_actions
    names = [token] if token in options else [o for o in options if o.startswith(token)]
    if not token.startswith("-") or len(names) != 1:  # argparse allows unique prefixes
        return False
    return options[names[0]].nargs in (None, "?")


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]):
    """(argv without its KEY=VALUE overrides, the overrides in order), for commands that take
    them; a word that is the value of an option (`-o a=b`) stays. Before `--` only."""
    leaf, start = _leaf_parser(parser, argv)
    if leaf is None or not any(a.dest == "overrides" for a in leaf._actions):
        return argv, []
    rest, overrides = list(argv[:start]), []
    for i in range(start, len(argv)):
        token = argv[i]
        if token == "--":
            return rest + argv[i:], overrides
        after_option = i > start and _takes_value(leaf, argv[i - 1])
        if _OVERRIDE_RE.match(token) and not after_option:
            overrides.append(token)
        else:
            rest.append(token)
    return rest, overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; KEY=VALUE overrides may stand anywhere after the command."""
    parser = build_parser()
    rest, overrides = split_overrides(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(rest)
    if overrides:
        args.overrides = overrides + list(getattr(args, "overrides", None) or [])
    return args


def setup_logging(verbose: bool) -> None:
    """Rank 0 logs (INFO, DEBUG with -v); under a launcher the other ranks log errors only,
    so an 8-rank job prints each step line once. A failing rank's one-line error is printed
    by main() on every rank."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if rank != 0:
        level, fmt = logging.ERROR, f"%(asctime)s %(levelname)s %(name)s [rank {rank}]: %(message)s"
        _quiet_libraries()
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S")
    # basicConfig does nothing when the root logger already has a handler (an embedding
    # program's, pytest's): aster's own logger carries the rank's level either way
    if rank != 0:
        logging.getLogger("aster").setLevel(logging.ERROR)


def _quiet_libraries() -> None:
    """transformers' own handler and progress bars (weight loading) on the other ranks."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def check_device(args: argparse.Namespace) -> None:
    """Fail fast, before any work, when an explicit --device is not usable here."""
    device = getattr(args, "device", None)
    if device not in (None, "auto"):
        resolve_device_name(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command is None:
        build_parser().print_help()
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
