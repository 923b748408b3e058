"""Options shared by the subcommands that run a job."""

from __future__ import annotations

import argparse

from aster.backend import DEVICE_CHOICES, DEVICE_HELP


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config and `a.b=c` overrides (anywhere after the command: aster.cli.split_overrides
    takes them out before argparse runs)."""
    parser.add_argument("--config", "-c", default=None, metavar="CONFIG",
                        help="a YAML file or the name of a shipped config (tiny, qwen3-4b, "
                             "qwen3-1.7b); default: the embedded tiny config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override config keys, anywhere on the command line, e.g. "
                             "rl.stage1.lr=2e-6 model.path=/ckpt "
                             "distributed.strategy=fsdp2|deepspeed|ddp|none "
                             "(`aster config show` lists every key; a file name with '=' in "
                             "it needs a ./ in front)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--config, --device, --output-dir, overrides."""
    add_config_args(parser)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=None, help=DEVICE_HELP)
    parser.add_argument("--output-dir", "-o", default=None, metavar="DIR",
                        help="run directory (default: runs/<config>-<timestamp>/)")
