"""`aster plot`: Draw reward, accuracy, tool-call and response-length curves of a run to PNG."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("plot", help="Draw reward, accuracy, tool-call and response-length curves of a run to PNG.", description="Draw reward, accuracy, tool-call and response-length curves of a run to PNG.")
    add_run_args(parser)
    parser.set_defaults(func=not_implemented("plot", "trainers"))
