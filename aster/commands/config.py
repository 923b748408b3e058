"""`aster config`: list the shipped configs or print a resolved one."""

from __future__ import annotations

import argparse

from aster.commands.common import add_config_args
from aster.config import DEFAULT_CONFIG, load_config, shipped_configs


def _show(args: argparse.Namespace) -> int:
    name, overrides = args.name, list(args.overrides)
    if name and "=" in name:  # `aster config show a.b=c`: no name, only overrides
        name, overrides = None, [name, *overrides]
    cfg = load_config(args.config or name, overrides)
    print(cfg.to_yaml(), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in shipped_configs():
        print(f"{name}{'  (default)' if name == DEFAULT_CONFIG else ''}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("config", help="Show the resolved config (with overrides).",
                            description="Print a config with its base chain and overrides "
                                        "resolved, every key shown, or list shipped configs.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML",
                              description="Print the resolved config as YAML. Example: "
                                          "aster config show qwen3-4b rl.lr=2e-6")
    show.add_argument("name", nargs="?", default=None, metavar="CONFIG",
                      help="a YAML path or shipped config name (default: tiny)")
    add_config_args(show)
    show.set_defaults(func=_show)
    lst = actions.add_parser("list", help="list the shipped configs")
    lst.set_defaults(func=_list)
