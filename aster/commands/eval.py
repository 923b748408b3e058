"""`aster eval`: avg@k / pass@k evaluation on AIME/HMMT-style sets with the tool."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("eval", help="avg@k / pass@k evaluation on AIME/HMMT-style sets with the tool.", description="avg@k / pass@k evaluation on AIME/HMMT-style sets with the tool.")
    add_run_args(parser)
    parser.set_defaults(func=not_implemented("eval", "data and evaluation"))
