"""`aster parity`: record a fixed-seed suite on this machine and compare two records."""

from __future__ import annotations

import argparse

from aster.backend import DEVICE_CHOICES, DEVICE_HELP, select_backend
from aster.parity import record_suite
from aster.parity_record import (
    compare_records,
    format_rows,
    read_record,
    skipped_dtypes,
    write_record,
)


def _record(args: argparse.Namespace) -> int:
    backend = select_backend(args.device, kernel_impl=args.kernel_impl)
    record = record_suite(backend, [d.strip() for d in args.dtypes.split(",") if d.strip()])
    write_record(record, args.out)
    for dtype, values in record["results"].items():
        if "skipped" in values:
            print(f"{dtype}: skipped ({values['skipped']})")
        else:
            rows = [{"dtype": dtype, "quantity": k, "A": v, "B": "", "diff": None, "tol": None,
                     "ok": True} for k, v in sorted(values.items())]
            print(format_rows(rows).replace("  yes", ""))
    print(f"record written to {args.out} ({backend.name}, kernels={backend.kernel_impl})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    a, b = read_record(args.a), read_record(args.b)
    rows, ok = compare_records(a, b)
    for name, path, rec in (("A", args.a, a), ("B", args.b, b)):
        print(f"{name}: {path} ({_describe(rec)})")
    if a.get("kind") == "rl_step":
        _warn_rl_step(a, b)
    print(format_rows(rows))
    for note in skipped_dtypes(a, b):
        print(f"not compared: {note}")
    bad = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - bad} of {len(rows)} quantities within tolerance" +
          ("" if ok else f"; {bad} NOT"))
    return 0 if ok else 1


def _describe(rec: dict) -> str:
    what = f"{rec['device']}, kernels={rec.get('kernel_impl')}, torch {rec.get('torch')}"
    if rec.get("kind") == "rl_step":
        what += f"; {rec['source']} of {rec['stage']} step {rec['step']}"
    return what


def _warn_rl_step(a: dict, b: dict) -> None:
    """Replay records of different steps or configs are comparable but will not agree."""
    if (a["stage"], a["step"]) != (b["stage"], b["step"]):
        print(f"note: A is {a['stage']} step {a['step']}, B is {b['stage']} step {b['step']}")
    if a.get("config_digest") != b.get("config_digest"):
        print("note: the two runs' training configs differ (config_digest); see the replay "
              "run's log for the keys")


def register(sub) -> None:
    desc = ("Prove two backends compute the same numbers: `record` runs the fixed-seed suite "
            "(kernels, one SFT step, one GRPO step of a tiny model) here and writes a JSON "
            "record; `compare` prints every quantity, its difference and tolerance, and exits "
            "1 when any is out of tolerance. `compare` also takes the per-step records of "
            "`aster rl --dump-rollouts DIR` (DIR/<stage>/stepNNNNNN/record.json) and of "
            "`aster rl --replay-rollouts DIR` (RUN/parity/<stage>/stepNNNNNN.json).")
    parser = sub.add_parser("parity", help="Cross-backend parity: record and compare.",
                            description=desc)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    record = actions.add_parser("record", help="run the fixed-seed suite and write a record")
    record.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help=DEVICE_HELP)
    record.add_argument("--out", required=True, metavar="FILE", help="the JSON record to write")
    record.add_argument("--dtypes", default="float64,float32",
                        help="comma-separated dtypes to run (float64, float32, bfloat16)")
    record.add_argument("--kernel-impl", default=None,
                        choices=["reference", "chunked", "triton"],
                        help="kernel implementation (default: the backend's)")
    record.set_defaults(func=_record)
    compare = actions.add_parser("compare", help="compare two records (suite, or a dumped and a "
                                 "replayed rl step); exit 1 when they disagree")
    compare.add_argument("a", metavar="A.json")
    compare.add_argument("b", metavar="B.json")
    compare.set_defaults(func=_compare)
