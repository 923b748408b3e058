"""`aster sft`: Cold-start SFT on multi-turn tool trajectories (loss on assistant tokens only)."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("sft", help="Cold-start SFT on multi-turn tool trajectories (loss on assistant tokens only).", description="Cold-start SFT on multi-turn tool trajectories (loss on assistant tokens only).")
    add_run_args(parser)
    parser.set_defaults(func=not_implemented("sft", "trainers"))
