"""Every value in configs/qwen3-4b*.yaml names its source (docs/recipe.md): a comment on its
line, or the comment block right above it, says paper, reproduction or aster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("qwen3-4b*.yaml"))
SOURCE = re.compile(r"\b(paper|reproduction|aster)\b")
VALUE = re.compile(r"^\s*[\w.-]+:\s*\S")  # `key: value` (a section header has no value)


def _unsourced(text: str) -> list[str]:
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        code, _, comment = line.partition("#")
        if not VALUE.match(code) or SOURCE.search(comment):
            continue
        above = []
        for prev in reversed(lines[:i]):
            if not prev.strip().startswith("#"):
                break
            above.append(prev)
        if not SOURCE.search(" ".join(above)):
            out.append(line.strip())
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_value_names_its_source(path):
    assert _unsourced(path.read_text()) == []


def test_the_check_sees_an_unsourced_value():
    assert _unsourced("rl:\n  lr: 1.0e-6\n  # paper\n  clip_low: 0.2\n  x: 1  # aster\n") == \
        ["lr: 1.0e-6"]
