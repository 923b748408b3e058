"""`aster train`: the whole ASTER recipe (SFT -> RL stage 1 -> filter -> RL stage 2 -> eval)."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    desc = ("Run the whole ASTER recipe: cold-start SFT, RL stage 1, the all-correct filter, "
            "RL stage 2 and evaluation. With no --config it runs the embedded tiny default.")
    parser = sub.add_parser("train", help="Run the whole recipe (default: tiny, on CPU).",
                            description=desc)
    add_run_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="resume the run in --output-dir from its last checkpoint")
    parser.set_defaults(func=not_implemented("train", "trainers"))
