"""`aster data`: Inspect, curate and synthesise SFT trajectories (stats, curate, synth)."""

from __future__ import annotations

from aster.commands.common import add_run_args, not_implemented


def register(sub) -> None:
    parser = sub.add_parser("data", help="Inspect, curate and synthesise SFT trajectories (stats, curate, synth).", description="Inspect, curate and synthesise SFT trajectories (stats, curate, synth).")
    add_run_args(parser)
    parser.set_defaults(func=not_implemented("data", "data and evaluation"))
