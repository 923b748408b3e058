"""`aster plan`: the per-device memory plan of each phase of a run (aster.plan)."""

from __future__ import annotations

import argparse
import math

from aster.commands.common import add_config_args
from aster.config import load_config
from aster.errors import AsterUserError
from aster.plan import build_plan, format_plan, problem


def _positive(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"{what} must be a number > 0, got {value!r}")
    return number


def run_plan(args: argparse.Namespace) -> int:
    if args.gpus < 1:
        raise AsterUserError(f"--gpus {args.gpus}: give the devices per node, >= 1")
    cfg = load_config(args.config, list(args.overrides))
    plan = build_plan(cfg, args.gpus, args.gpu_memory_gb, kernel_impl=args.kernel_impl)
    print(format_plan(plan))
    reason = problem(plan)
    if reason is not None:
        raise AsterUserError(reason)
    return 0


def register(sub) -> None:
    desc = ("Print the per-device memory plan of each phase of a run (SFT and RL updates, the "
            "weight push, rollouts, eval) for a config on a node; exits 2 with the key to change "
            "when a phase does not fit. Example: aster plan --config qwen3-4b --gpus 8 "
            "--gpu-memory-gb 80")
    parser = sub.add_parser("plan", help="per-device memory plan of a run's phases",
                            description=desc)
    parser.add_argument("--gpus", type=int, default=8, help="devices on the node (default 8)")
    parser.add_argument("--gpu-memory-gb", type=lambda v: _positive(v, "--gpu-memory-gb"),
                        default=80.0, metavar="GB",
                        help="memory per device in GiB (default 80; an '80 GB' H100 has 79.6)")
    parser.add_argument("--kernel-impl", choices=("triton", "chunked"), default="triton",
                        help="the log-prob kernel the node runs (default triton, the GPU backend's)")
    add_config_args(parser)
    parser.set_defaults(func=run_plan)
