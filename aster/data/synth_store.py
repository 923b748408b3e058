"""Where `aster data synth` writes, and how a rerun knows what is already done.

Every finished (problem, sample) ends up in exactly one of two files: OUT (a usable SFT row in
the chosen layout, with the columns `problem`, `sample`, `answer`, `correct`,
`finish_reason`, `tool_calls` next to the layout's own) or ``OUT.rejected.jsonl`` (a
trajectory that cannot be SFT data, e.g. one with a malformed tool call, with the reason).
A rerun skips the keys found in both.

jsonl output is appended line by line (a line cut off by a kill is dropped on the rerun).
parquet output cannot be appended: finished rows go to part files in ``.OUT.parts/`` and are
merged into OUT, atomically, when the run ends (also on an error or Ctrl-C); parts left by a
killed run are picked up by the rerun.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from aster.data.formats import LAYOUTS, detect_layout
from aster.data.io import DataError, file_kind, read_rows, write_rows

logger = logging.getLogger("aster")

META_COLUMNS = ("problem", "sample", "answer", "correct", "finish_reason", "tool_calls")


def default_layout(path: str | os.PathLike) -> str:
    """ASTER_SFT4K (sharegpt) for .parquet, aster's own form for .jsonl."""
    return "sharegpt" if file_kind(path) == "parquet" else "aster"


def row_key(row: dict) -> tuple[str, int]:
    """The resume key of a written row."""
    return row["problem"], int(row["sample"])


def _read_jsonl_resumable(path: Path) -> list[dict]:
    """Rows of a synth jsonl; a cut-off last line (a killed run) is dropped from the file."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1 and not text.endswith("\n"):
                logger.warning("%s: dropping a cut-off last line (an interrupted run)", path)
                path.write_text("".join(f"{ln}\n" for ln in lines[:-1]), encoding="utf-8")
                break
            raise DataError(f"{path}: line {number + 1} is not JSON; it was not written by "
                            "`aster data synth`; give another output path") from None
    return rows


def _keys(rows: list[dict], path: Path) -> set[tuple[str, int]]:
    try:
        return {row_key(r) for r in rows}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path} has rows without `problem`/`sample`; it was not written by "
                        "`aster data synth`; give another output path") from None


class SynthStore:
    """The output of one synthesis run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, layout: str | None = None):
        self.path = Path(path)
        self.kind = file_kind(self.path)
        self.layout = layout or default_layout(self.path)
        if self.layout not in LAYOUTS:
            raise DataError(f"--format {self.layout!r} must be one of {', '.join(LAYOUTS)}")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected.jsonl")
        self.parts_dir = self.path.with_name(f".{self.path.name}.parts")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._buffer: list[dict] = []
        self.done = self._existing()

    def _existing(self) -> set[tuple[str, int]]:
        rows: list[dict] = []
        if self.path.exists():
            rows = (read_rows(self.path)[0] if self.kind == "parquet"
                    else _read_jsonl_resumable(self.path))
        for part in sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.is_dir() else []:
            rows += read_rows(part)[0]
        self._check_layout(rows)
        done = _keys(rows, self.path)
        if self.rejected_path.exists():
            done |= _keys(_read_jsonl_resumable(self.rejected_path), self.rejected_path)
        return done

    def _check_layout(self, rows: list[dict]) -> None:
        if not rows:
            return
        found = detect_layout(rows)
        if (found == "sharegpt") != (self.layout == "sharegpt"):
            raise DataError(f"{self.path} holds {found} rows but --format is {self.layout}; "
                            f"resume with --format {found} or give another output path")

    def add(self, rows: list[dict], rejected: list[dict], flush_every: int = 1) -> None:
        """Record finished rows (already in the layout) and rejected trajectories."""
        if rejected:
            self._append_jsonl(self.rejected_path, rejected)
        if self.kind == "jsonl":
            self._append_jsonl(self.path, rows)
        else:
            self._buffer += rows
            if len(self._buffer) >= flush_every:
                self._flush_part()
        self.done |= {row_key(r) for r in [*rows, *rejected]}

    @staticmethod
    def _append_jsonl(path: Path, rows: list[dict]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            fh.flush()

    def _flush_part(self) -> None:
        if not self._buffer:
            return
        self.parts_dir.mkdir(exist_ok=True)
        index = len(list(self.parts_dir.glob("*.parquet")))
        write_rows(self._buffer, self.parts_dir / f"part-{index:06d}.parquet")
        self._buffer = []

    def close(self) -> None:
        """Merge parquet parts into OUT (atomically) and remove them."""
        if self.kind != "parquet":
            return
        self._flush_part()
        if not self.parts_dir.is_dir():
            return
        rows = read_rows(self.path)[0] if self.path.exists() else []
        for part in sorted(self.parts_dir.glob("*.parquet")):
            rows += read_rows(part)[0]
        if rows:
            write_rows(rows, self.path)
        shutil.rmtree(self.parts_dir)
