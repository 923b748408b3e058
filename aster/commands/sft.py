"""`aster sft`: cold-start SFT on multi-turn tool trajectories (loss on assistant tokens only)."""

from __future__ import annotations

from aster.commands.common import add_run_args
from aster.commands.train import setup
from aster.train.pipeline import run_pipeline
from aster.train.stages import StageInputError

DESC = "Cold-start SFT on multi-turn tool trajectories (loss on assistant tokens only)."


def run(args) -> int:
    cfg, backend = setup(args)
    if "sft" not in cfg.run.stages:  # a stage config runs its own stages, never another's
        raise StageInputError(f"run.stages={cfg.run.stages} has no sft; use a config that has "
                              "it (qwen3-4b-sft) or add run.stages=[sft]")
    cfg.run.stages = ["sft"]
    run_pipeline(cfg, backend, config_name=args.config, output_dir=args.output_dir,
                 resume=args.resume)
    return 0


def register(sub) -> None:
    parser = sub.add_parser("sft", help=DESC, description=DESC)
    add_run_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="resume the run in --output-dir from its last checkpoint")
    parser.set_defaults(func=run)
