"""Stateful Python sandbox: ``SandboxPool(config)``, ``pool.session()``, ``session.run(code)``.

Each session is a long-lived interpreter forked from a warm zygote that has already imported
the heavy modules; state persists across the calls of a session, limits are enforced from
outside. As root a session is confined: an allow-listed environment, a filesystem view and a
pid namespace of its own, its own uid, no capabilities, no network (``SandboxPool.protections``
and ``SandboxPool.enforcement`` say what this machine allows).
"""

from aster.sandbox.config import SandboxConfig
from aster.sandbox.pool import SandboxPool, Session
from aster.sandbox.result import (
    ExecResult,
    SandboxBusyError,
    SandboxClosedError,
    SandboxConfinementError,
    SandboxError,
    format_tool_response,
)

__all__ = [
    "ExecResult", "SandboxBusyError", "SandboxClosedError", "SandboxConfig",
    "SandboxConfinementError", "SandboxError", "SandboxPool", "Session", "format_tool_response",
]
