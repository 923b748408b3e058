"""`aster rl`: GRPO with the stateful Python sandbox (one stage; see `aster train` for both)."""

from __future__ import annotations

import json
from pathlib import Path

from aster.commands.common import add_run_args
from aster.commands.train import add_rollout_dump_args

DESC = "GRPO with the stateful Python sandbox (one stage; see `aster train` for both)."


def run(args) -> int:
    from aster.commands.train import setup
    from aster.train.pipeline import run_pipeline

    if args.filter_records:
        return _filter(args)
    cfg, backend = setup(args)
    cfg.run.stages = [args.stage]
    run_pipeline(cfg, backend, config_name=args.config, output_dir=args.output_dir,
                 resume=args.resume)
    return 0


def _filter(args) -> int:
    """The standalone all-correct filter over recorded rollouts."""
    from aster.config import load_config
    from aster.data.prompts import load_prompts, write_prompts
    from aster.errors import AsterUserError
    from aster.train.rl import filter_prompts

    cfg = load_config(args.config, args.overrides)
    if not Path(args.filter_records).is_file():
        raise AsterUserError(f"--filter-records {args.filter_records}: no such file; give a "
                             "run's rollouts/rl_stage1.jsonl")
    if cfg.data.rl_path == "synthetic":
        raise AsterUserError("--filter-records needs data.rl_path=<prompts file> (the prompt "
                             "indices in the records refer to it)")
    prompts = load_prompts(cfg.data.rl_path, cfg.data.max_rows).prompts
    kept, dropped = filter_prompts(prompts, args.filter_records)
    out = args.filter_out or str(Path(args.filter_records).with_name("stage2_prompts.jsonl"))
    write_prompts(kept, out)
    print(json.dumps({"kept": len(kept), "dropped": dropped, "written": out}))
    return 0


def register(sub) -> None:
    parser = sub.add_parser("rl", help=DESC, description=DESC)
    add_run_args(parser)
    parser.add_argument("--stage", choices=["rl_stage1", "rl_stage2"], default="rl_stage1",
                        help="which stage's settings (rl.stage1 / rl.stage2) to run")
    parser.add_argument("--resume", action="store_true",
                        help="resume the run in --output-dir from its last checkpoint")
    parser.add_argument("--filter-records", metavar="JSONL", default=None,
                        help="only run the all-correct filter over recorded rollouts "
                             "(rollouts/rl_stage1.jsonl) and write the kept prompts")
    parser.add_argument("--filter-out", metavar="FILE", default=None,
                        help="where --filter-records writes the kept prompts (jsonl)")
    add_rollout_dump_args(parser)
    parser.set_defaults(func=run)
