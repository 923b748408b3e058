"""`aster rl`: GRPO with the stateful Python sandbox (one stage; see `aster train` for both)."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("rl", help="GRPO with the stateful Python sandbox (one stage; see `aster train` for both).", description="GRPO with the stateful Python sandbox (one stage; see `aster train` for both).")
    add_run_args(parser)
    parser.set_defaults(func=not_implemented("rl", "trainers"))
