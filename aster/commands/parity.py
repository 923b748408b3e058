"""`aster parity`: record a fixed-seed suite on this machine and compare two records."""

from __future__ import annotations

from aster.backend import DEVICE_CHOICES
from aster.commands.common import not_implemented


def register(sub) -> None:
    desc = ("Prove two backends compute the same numbers: `record` runs the fixed-seed suite "
            "(kernels, SFT step, GRPO step) here; `compare` prints every quantity's difference.")
    parser = sub.add_parser("parity", help="Cross-backend parity: record and compare.",
                            description=desc)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    record = actions.add_parser("record", help="run the fixed-seed suite and write a record")
    record.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    record.add_argument("--out", required=True, metavar="FILE", help="the JSON record to write")
    record.set_defaults(func=not_implemented("parity record", "parity harness"))
    compare = actions.add_parser("compare", help="compare two records; exit 1 when they disagree")
    compare.add_argument("a", metavar="A.json")
    compare.add_argument("b", metavar="B.json")
    compare.set_defaults(func=not_implemented("parity compare", "parity harness"))
