"""`aster train`: the whole ASTER recipe (SFT -> RL stage 1 -> filter -> RL stage 2 -> eval)."""

from __future__ import annotations

import logging

from aster.commands.common import add_run_args

log = logging.getLogger("aster")


def setup(args):
    """(config, backend) from the common run arguments."""
    from aster.backend import select_backend
    from aster.config import load_config

    cfg = load_config(args.config, args.overrides)
    backend = select_backend(args.device or cfg.run.device, kernel_impl=cfg.backend.kernel_impl,
                             engine=cfg.rollout.engine)
    return cfg, backend


def run(args) -> int:
    from aster.train.pipeline import format_summary, run_pipeline

    cfg, backend = setup(args)
    summary = run_pipeline(cfg, backend, config_name=args.config, output_dir=args.output_dir,
                           resume=args.resume)
    if backend.dist.is_main and summary:
        print(format_summary(summary))
    return 0


def register(sub) -> None:
    desc = ("Run the whole ASTER recipe: cold-start SFT, RL stage 1, the all-correct filter, "
            "RL stage 2 and evaluation. With no --config it runs the embedded tiny default.")
    parser = sub.add_parser("train", help="Run the whole recipe (default: tiny, on CPU).",
                            description=desc)
    add_run_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="resume the run in --output-dir from its last checkpoint")
    parser.set_defaults(func=run)
