"""Stateful Python sandbox: ``SandboxPool(config)``, ``pool.session()``, ``session.run(code)``.

Each session is a long-lived interpreter forked from a warm zygote that has already imported
the heavy modules; state persists across the calls of a session, limits are enforced from
outside (see ``SandboxPool.enforcement`` for what this machine allows).
"""

from aster.sandbox.config import SandboxConfig
from aster.sandbox.pool import SandboxPool, Session
from aster.sandbox.result import (
    ExecResult,
    SandboxBusyError,
    SandboxClosedError,
    SandboxError,
    format_tool_response,
)

__all__ = [
    "ExecResult", "SandboxBusyError", "SandboxClosedError", "SandboxConfig", "SandboxError",
    "SandboxPool", "Session", "format_tool_response",
]
