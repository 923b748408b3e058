"""Reading and writing rows of parquet / jsonl files; hub names; counting malformed rows."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aster.errors import AsterUserError

logger = logging.getLogger("aster")

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


class DataError(AsterUserError):
    """A data file that is missing, unreadable, or has no usable rows."""


@dataclass
class Skipped:
    """Malformed rows: how many, and the first few reasons (row index: why)."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)
    keep: int = 5

    def add(self, index: int, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < self.keep:
            self.reasons.append(f"row {index}: {reason}")

    def report(self, path: str, kept: int) -> None:
        """Log the count and the first reasons; raise when nothing usable is left."""
        if self.count:
            logger.warning("%s: skipped %d malformed rows of %d (first: %s)", path, self.count,
                           self.count + kept, "; ".join(self.reasons))
        if kept == 0:
            why = f" (first: {self.reasons[0]})" if self.reasons else ""
            raise DataError(f"{path} has no usable rows{why}; check its layout")


def file_kind(path: str | os.PathLike) -> str:
    """'parquet' or 'jsonl', from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"{path}: unknown file type {suffix!r}; use .parquet or .jsonl")


def resolve_path(path: str | os.PathLike) -> Path:
    """A local data file; a Hugging Face dataset name gives a one-line error (no hub here)."""
    text = str(path)
    local = Path(text).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        files = sorted([*local.glob("*.parquet"), *local.glob("*.jsonl")])
        if len(files) == 1:
            return files[0]
        raise DataError(f"{text} is a directory with {len(files)} .parquet/.jsonl files; "
                        "give one file")
    if _HUB_NAME.match(text) and not text.endswith((".parquet", ".jsonl", ".json")):
        raise DataError(f"{text!r} looks like a Hugging Face dataset name, but the hub is not "
                        "reachable from aster's loaders; download it and give a local "
                        ".parquet or .jsonl file")
    raise DataError(f"data file {text} not found; give a local .parquet or .jsonl file")


def read_rows(path: str | os.PathLike) -> tuple[list, str]:
    """All rows of a parquet or jsonl file as Python objects (undecodable jsonl lines as None)."""
    local = resolve_path(path)
    kind = file_kind(local)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(local).to_pylist(), kind
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"{local}: not a readable parquet file ({exc})") from exc
    rows = []
    with open(local, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                rows.append(_BadLine(str(exc)))
    return rows, kind


class _BadLine:
    """A jsonl line that is not JSON: kept in place so that row numbers stay right."""

    def __init__(self, error: str):
        self.error = error


def is_bad_line(row) -> str | None:
    """The decode error of a row read from a broken jsonl line, else None."""
    return f"not JSON ({row.error})" if isinstance(row, _BadLine) else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_rows(rows: list[dict], path: str | os.PathLike) -> None:
    """Write rows atomically (a temporary file renamed into place) as parquet or jsonl."""
    out = Path(path)
    kind = file_kind(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a data file is not
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
