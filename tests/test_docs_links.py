"""README.md and docs/*.md: every relative link and every repository path they name exists.

A path is a backticked token that starts with one of the repository's top folders (aster/,
backends/, kernels/, configs/, bench/, scripts/, tests/, docs/, .ci/) or a relative link target.
Globs, placeholders (<...>, NAME, ...) and run outputs (runs/, bench/results/*.json) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOPS = ("aster/", "backends/", "kernels/", "configs/", "bench/", "scripts/", "tests/", "docs/",
        ".ci/")
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")
TICKED = re.compile(r"`([^`\s]+)`")


def named_paths(text: str) -> set[str]:
    found = {m.group(1) for m in LINK.finditer(text) if "://" not in m.group(1)}
    for m in TICKED.finditer(text):
        token = m.group(1).rstrip(".,:;)")
        token = token.split("::", 1)[0]  # pytest node ids
        if token.startswith(TOPS):
            found.add(token)
    return {p for p in found if not re.search(r"[<>*{}]|\.\.\.|NAME|RUN|DIR|STAGE|\$", p)
            and not p.startswith(("runs/", "bench/results/"))}


def resolve(page: Path, path: str) -> Path:
    base = page.parent if not path.startswith(TOPS) else REPO
    return (base / path).resolve()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_named_path_exists(page):
    missing = sorted(p for p in named_paths(page.read_text()) if not resolve(page, p).exists())
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for page in PAGES:
        linked |= {resolve(page, p) for p in named_paths(page.read_text())}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages nothing links to: {orphans}"
