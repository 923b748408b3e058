"""The core (aster/) never names a device, vendor or collective: that is backends/' job."""

from __future__ import annotations

import re
from pathlib import Path

import aster

FORBIDDEN = re.compile(r"\bcuda\b|\bnpu\b|nccl|hccl|torch_npu", re.IGNORECASE)
CORE = Path(aster.__file__).parent
ALLOWED = {CORE / "backend.py"}  # the registry maps --device names to implementations


def test_core_names_no_device():
    hits = []
    for path in sorted(CORE.rglob("*.py")):
        if path in ALLOWED:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(CORE.parent)}:{lineno}: {line.strip()}")
    assert not hits, "device names in the core (move them to backends/):\n" + "\n".join(hits)


def test_backends_and_kernels_install_under_aster():
    import aster.backends
    import aster.kernels

    assert Path(aster.backends.__file__).parent.name == "backends"
    assert aster.backends.__name__ == "aster.backends" and aster.kernels.__name__ == "aster.kernels"
