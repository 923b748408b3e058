"""Small probes shared by the backend implementations.

A package being importable is not the feature working: a flash-attn or vLLM wheel built for
another torch imports (or half-imports) and then crashes at the first call. Features are
therefore switched on by a probe that imports the package and runs a tiny op; when the probe
fails the backend falls back and logs the reason once.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("aster")
_LOGGED: set[str] = set()


def has_module(name: str) -> bool:
    """True when `name` can be imported (without importing it; a dotted name imports its
    parent packages, and a parent that fails to import counts as absent)."""
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:  # noqa: BLE001 - ImportError, ValueError, or a parent that crashes
        return False


@dataclass(frozen=True)
class Probe:
    """Whether a feature works here, and why not (empty when it does)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def run_probe(feature: str, tiny_op: Callable[[], object]) -> Probe:
    """Run `tiny_op` (import the package, run one small op, check its result; raise on any
    failure). A failure is logged once per feature and reason, as a fallback."""
    try:
        tiny_op()
    except Exception as exc:  # noqa: BLE001 - any failure means the feature is off
        lines = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        reason = f"{feature} is installed but its probe failed ({why})"
        if reason not in _LOGGED:
            _LOGGED.add(reason)
            log.warning("%s; running without it", reason)
        return Probe(False, reason)
    return Probe(True)

