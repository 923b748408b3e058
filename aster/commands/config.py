"""`aster config`: show a resolved config."""

from __future__ import annotations

from aster.commands.common import not_implemented


def register(sub) -> None:
    parser = sub.add_parser("config", help="Show the resolved config (with overrides).")
    parser.set_defaults(func=not_implemented("config", "foundation"))
