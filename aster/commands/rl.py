"""`aster rl`: GRPO with the stateful Python sandbox, the config's RL stages (docs/recipe.md,
"Stages run alone")."""

from __future__ import annotations

import json
from pathlib import Path

from aster.commands.common import add_run_args
from aster.commands.train import add_rollout_dump_args, setup
from aster.config import load_config
from aster.data.prompts import load_prompts, write_prompts
from aster.errors import AsterUserError
from aster.train.pipeline import run_pipeline
from aster.train.rl import filter_prompts
from aster.train.stages import rl_stages

DESC = ("GRPO with the stateful Python sandbox: the config's RL stages (--stage narrows them; "
        "see `aster train` for the whole recipe).")


def run(args) -> int:
    if args.filter_out:
        return _filter(args)
    cfg, backend = setup(args)
    cfg.run.stages = rl_stages(cfg.run.stages, args.stage)
    if args.filter_records:
        cfg.rl.stage2.filter_records = args.filter_records
    run_pipeline(cfg, backend, config_name=args.config, output_dir=args.output_dir,
                 resume=args.resume)
    return 0


def _filter(args) -> int:
    """The standalone all-correct filter over recorded rollouts."""
    cfg = load_config(args.config, args.overrides)
    if not args.filter_records:
        raise AsterUserError("--filter-out needs --filter-records RUN/rollouts/rl_stage1.jsonl "
                             "(the stage-1 records to filter by)")
    if not Path(args.filter_records).is_file():
        raise AsterUserError(f"--filter-records {args.filter_records}: no such file; give a "
                             "run's rollouts/rl_stage1.jsonl")
    if cfg.data.rl_path == "synthetic":
        raise AsterUserError("--filter-records needs data.rl_path=<prompts file> (the prompt "
                             "indices in the records refer to it)")
    prompts = load_prompts(cfg.data.rl_path, cfg.data.max_rows).prompts
    kept, dropped = filter_prompts(prompts, args.filter_records)
    out = args.filter_out
    write_prompts(kept, out)
    print(json.dumps({"kept": len(kept), "dropped": dropped, "written": out}))
    return 0


def register(sub) -> None:
    parser = sub.add_parser("rl", help=DESC, description=DESC)
    add_run_args(parser)
    parser.add_argument("--stage", choices=["rl_stage1", "rl_stage2"], default=None,
                        help="narrow the config's RL stages to this one (rl_stage2 keeps the "
                             "filter before it); default: all of the config's RL stages")
    parser.add_argument("--resume", action="store_true",
                        help="resume the run in --output-dir from its last checkpoint")
    parser.add_argument("--filter-records", metavar="JSONL", default=None,
                        help="stage 1's records (RUN/rollouts/rl_stage1.jsonl) for stage 2's "
                             "all-correct filter when stage 2 runs alone "
                             "(= rl.stage2.filter_records)")
    parser.add_argument("--filter-out", metavar="FILE", default=None,
                        help="only run the all-correct filter over --filter-records and write "
                             "the kept prompts to FILE (jsonl; train on it with "
                             "data.rl_path=FILE rl.stage2.filter_all_correct=false)")
    add_rollout_dump_args(parser)
    parser.set_defaults(func=run)
