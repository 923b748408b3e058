"""Parity records: written to and read from JSON, and two records compared quantity by
quantity against tolerances written down per dtype; and the weight checksums both kinds of
record carry.

A record is written by the fixed-seed suite (aster.parity, `aster parity record`, kind `suite`)
or by a dumped or replayed GRPO step (aster.train.replay, kind `rl_step`), and read by
`aster parity compare`. Apart from the suite, which runs the trainer, so that the trainer can
write records without importing it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from pathlib import Path

import torch

from aster.errors import AsterUserError

# (rtol, atol) per dtype. float64: the kernels return fp32 log-probs by contract, so agreement
# is bounded by fp32 rounding of the outputs (~1e-7 relative) and then one Adam step.
# float32: different GEMM/reduction orders (MKL vs cuBLAS vs CANN) differ by ~1e-6 relative per
# op; through a 2-layer model, a backward and one optimizer step that grows to ~1e-4.
# bfloat16: 8 mantissa bits (~4e-3 per op) through the same chain.
# float16 (a model.dtype for rl_step records): 11 significant bits, between the two.
TOLERANCES = {"float64": (1e-6, 1e-8), "float32": (2e-4, 1e-5), "bfloat16": (5e-2, 2e-2),
              "float16": (1e-2, 5e-3)}
# Per-quantity overrides (fnmatch patterns on the quantity name, first match wins), e.g. the
# inputs of a replayed step: both runs read the same dumped trajectories, so their counts,
# rewards and rollout log-probs must agree exactly; any difference means a different dump.
QUANTITY_TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "input.*": {dtype: (0.0, 0.0) for dtype in TOLERANCES},
}

def weight_checksums(model: torch.nn.Module, prefix: str = "weights_") -> dict[str, float]:
    """Sum, absolute sum and a position-weighted sum (weights 1..7 cycling over the flattened
    parameters, so swapped or shifted values change it) of every parameter, in float64.
    Streams over parameters in chunks (no full copy of the model); sharded parameters are
    gathered one at a time (a collective: every rank calls it)."""
    sums = torch.zeros(3, dtype=torch.float64)
    offset = 0
    for param in model.parameters():
        t = param.detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        flat = t.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            part = flat[start:start + _CHUNK].double()
            pos = torch.arange(offset + start, offset + start + part.numel(),
                               device=part.device) % 7 + 1
            sums += torch.stack([part.sum(), part.abs().sum(), (part * pos).sum()]).cpu()
        offset += flat.numel()
    return {f"{prefix}sum": sums[0].item(), f"{prefix}abs_sum": sums[1].item(),
            f"{prefix}weighted_sum": sums[2].item()}


_CHUNK = 1 << 24


def skipped_dtypes(a: dict, b: dict) -> list[str]:
    """One line per dtype that one of the two records skipped (compare_records leaves those
    out, so a device that cannot run a dtype must not look like agreement)."""
    notes = []
    for dtype in sorted(set(a["results"]) | set(b["results"])):
        for name, rec in (("A", a), ("B", b)):
            values = rec["results"].get(dtype)
            if values is None:
                notes.append(f"{dtype}: not in {name}")
            elif "skipped" in values:
                notes.append(f"{dtype}: skipped in {name} ({values['skipped']})")
    return notes


def write_record(record: dict, path: str) -> None:
    """Atomic write: temp file then rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, out)


def read_record(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AsterUserError(f"parity record {path!r} not found; make one with "
                             "`aster parity record --out FILE`") from None
    except json.JSONDecodeError as exc:
        raise AsterUserError(f"parity record {path!r} is not valid JSON ({exc.msg})") from None
    if "results" not in data:
        raise AsterUserError(f"{path!r} is not a parity record (no 'results')")
    return data


def tolerance(dtype: str, quantity: str) -> tuple[float, float]:
    """(rtol, atol) for `quantity` in `dtype`: the first QUANTITY_TOLERANCES pattern that
    matches the name, else the dtype's default from TOLERANCES."""
    for pattern, per_dtype in QUANTITY_TOLERANCES.items():
        if fnmatch.fnmatchcase(quantity, pattern) and dtype in per_dtype:
            return per_dtype[dtype]
    return TOLERANCES[dtype]


def _compare_values(va, vb, rtol: float, atol: float) -> tuple:
    """(diff, tol, ok) for two scalars, or for two equal-length lists element by element
    (diff: the largest |a_i - b_i|, tol: the tolerance at that element)."""
    if isinstance(va, list) or isinstance(vb, list):
        if not (isinstance(va, list) and isinstance(vb, list)) or len(va) != len(vb):
            return None, None, False
        if not va:
            return 0.0, atol, True
        diffs = [abs(x - y) for x, y in zip(va, vb)]
        tols = [atol + rtol * max(abs(x), abs(y)) for x, y in zip(va, vb)]
        good = all(d <= t for d, t in zip(diffs, tols)) and all(map(math.isfinite, va + vb))
        worst = max(range(len(diffs)), key=lambda i: diffs[i] - tols[i])
        return diffs[worst], tols[worst], good
    diff = abs(va - vb)
    tol = atol + rtol * max(abs(va), abs(vb))
    return diff, tol, diff <= tol and math.isfinite(va) and math.isfinite(vb)


def record_kind(record: dict) -> str:
    """`suite` (aster parity record) or `rl_step` (a dumped or replayed GRPO step)."""
    return record.get("kind", "suite")


def compare_records(a: dict, b: dict) -> tuple[list[dict], bool]:
    """Every quantity present in either record: values, difference, tolerance, verdict. A
    quantity present in only one record fails. List-valued quantities (per-token or
    per-trajectory values) compare element by element."""
    if record_kind(a) != record_kind(b):
        raise AsterUserError(f"cannot compare a {record_kind(a)} record with a "
                             f"{record_kind(b)} record; compare two of the same kind")
    rows, ok = [], True
    for dtype, values_a in a["results"].items():
        values_b = b["results"].get(dtype)
        if values_b is None or "skipped" in values_a or "skipped" in values_b:
            continue
        for key in sorted(set(values_a) | set(values_b)):
            va, vb = values_a.get(key), values_b.get(key)
            if va is None or vb is None:
                diff, tol, good = None, None, False
            else:
                diff, tol, good = _compare_values(va, vb, *tolerance(dtype, key))
            ok &= good
            rows.append({"dtype": dtype, "quantity": key, "A": va, "B": vb, "diff": diff,
                         "tol": tol, "ok": good})
    if not rows:
        raise AsterUserError("the two parity records share no dtype with results; record both "
                             "with the same --dtypes (for rl_step records: the same model.dtype)")
    return rows, ok


def _fmt(v) -> str:
    if isinstance(v, list):
        return f"{f'[{len(v)} values]':>16}"
    return f"{v:16.9g}" if isinstance(v, float) else f"{v!s:>16}"


def format_rows(rows: list[dict]) -> str:
    """The compare table, one quantity per line."""
    head = f"{'dtype':9} {'quantity':38} {'A':>16} {'B':>16} {'|A-B|':>10} {'tol':>10}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        diff = f"{r['diff']:10.2e}" if r["diff"] is not None else f"{'-':>10}"
        tol = f"{r['tol']:10.2e}" if r["tol"] is not None else f"{'-':>10}"
        lines.append(f"{r['dtype']:9} {r['quantity']:38} {_fmt(r['A'])} {_fmt(r['B'])} {diff} "
                     f"{tol}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
