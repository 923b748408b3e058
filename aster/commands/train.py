"""`aster train`: the whole ASTER recipe (SFT -> RL stage 1 -> filter -> RL stage 2 -> eval)."""

from __future__ import annotations

import logging

from aster.backend import select_backend
from aster.commands.common import add_run_args
from aster.config import load_config
from aster.errors import ConfigError
from aster.train.pipeline import format_summary, run_pipeline
from aster.train.replay import check_rollout_dirs

log = logging.getLogger("aster")


def setup(args):
    """(config, backend) from the common run arguments."""
    cfg = load_config(args.config, args.overrides)
    _apply_rollout_flags(cfg, args)
    backend = select_backend(args.device or cfg.run.device, kernel_impl=cfg.backend.kernel_impl,
                             engine=cfg.rollout.engine)
    return cfg, backend


def _apply_rollout_flags(cfg, args) -> None:
    """--dump-rollouts / --replay-rollouts into their config keys, validated as such, and the
    directories checked before anything is written."""
    if getattr(args, "dump_rollouts", None):
        cfg.rl.dump_rollouts_dir = args.dump_rollouts
    if getattr(args, "replay_rollouts", None):
        cfg.rl.replay_rollouts_dir = args.replay_rollouts
    try:
        cfg.rl.__post_init__()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_rollout_dirs(cfg)


def add_rollout_dump_args(parser) -> None:
    """--dump-rollouts / --replay-rollouts (the keys rl.dump_rollouts_dir / replay_rollouts_dir)."""
    group = parser.add_argument_group(
        "rollout dump and replay (cross-backend parity; see aster.train.replay)")
    group.add_argument("--dump-rollouts", metavar="DIR", default=None,
                       help="write every GRPO step's trajectories (token ids, loss masks, "
                            "rewards, rollout log-probs) and a parity record of the step to DIR "
                            "(= rl.dump_rollouts_dir)")
    group.add_argument("--replay-rollouts", metavar="DIR", default=None,
                       help="skip generation: train each GRPO step on the trajectories dumped "
                            "in DIR and write the step's parity record to "
                            "OUTPUT_DIR/parity/<stage>/; compare it with DIR's record using "
                            "`aster parity compare` (= rl.replay_rollouts_dir)")


def run(args) -> int:
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
    add_rollout_dump_args(parser)
    parser.set_defaults(func=run)
