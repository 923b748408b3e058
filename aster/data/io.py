"""Reading and writing rows of parquet / jsonl / json files; hub names; counting malformed rows.

`.jsonl` (and `.ndjson`) hold one JSON object a line; `.json` holds a JSON array of objects
(LlamaFactory's data files, `json.dump(rows)`) or JSON lines (`Dataset.to_json`): both are read.
Text is UTF-8 (a byte-order mark is allowed); rows are written as JSON lines.
"""

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
SFT_LAYOUTS_HELP = ("SFT trajectories with `conversations` (ASTER_SFT4K / LlamaFactory) or "
                    "`messages` (OpenAI / aster)")
PROMPT_LAYOUTS_HELP = ("prompts with `prompt` + `reward_model` (verl / DAPO) or `problem` + "
                       "`answer`")
LAYOUTS_HELP = (f"aster reads {SFT_LAYOUTS_HELP}, and {PROMPT_LAYOUTS_HELP}, from .parquet, "
                ".jsonl (one UTF-8 JSON object a line) or .json (an array of objects)")


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
            raise DataError(f"{path} has no usable rows{why}; {LAYOUTS_HELP}")


def require_columns(rows: list, path, accepted: set[str], what: str) -> None:
    """A one-line error when no row of the file has any of the `accepted` columns: a layout
    aster does not read (rows that are not objects are left to the per-row reasons)."""
    objects = [r for r in rows if isinstance(r, dict)]
    if not objects or any(accepted & r.keys() for r in objects):
        return
    columns = ", ".join(sorted(map(str, objects[0]))[:12]) or "none"
    raise DataError(f"{path}: no layout aster reads as {what} (columns: {columns}); "
                    f"{LAYOUTS_HELP}")


def file_kind(path: str | os.PathLike) -> str:
    """'parquet' or 'jsonl' (.jsonl, .ndjson, .json), from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"{path}: unknown file type {suffix!r}; use .parquet, .jsonl or .json")


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
    """All rows of a parquet, jsonl or json file as Python objects (undecodable jsonl lines as
    _BadLine, kept in place so that row numbers stay right)."""
    local = resolve_path(path)
    kind = file_kind(local)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(local).to_pylist(), kind
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"{local}: not a readable parquet file ({exc})") from exc
    text = _read_text(local)
    if local.suffix.lower() == ".json":
        whole = _whole_json(local, text)
        if whole is not None:
            return whole, kind
    rows = []
    for line in text.split("\n"):  # not splitlines(): U+2028 and \x85 may stand in a row
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            rows.append(_BadLine(str(exc)))
    return rows, kind


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; another encoding is a one-line error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 (byte {data[exc.start]:#04x}); "
                        f"re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`); "
                        f"{LAYOUTS_HELP}") from None


def _whole_json(path: Path, text: str) -> list | None:
    """The rows of a .json file that is one JSON value: an array of rows, or one object (one
    row); None when it is JSON lines instead."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}); {LAYOUTS_HELP}") from None
        return None  # JSON lines
    return value if isinstance(value, list) else [value]


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
