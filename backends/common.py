"""Small probes shared by the backend implementations."""

from __future__ import annotations

import importlib.util


def has_module(name: str) -> bool:
    """True when `name` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
