"""ExecResult, the sandbox's errors, and the tool-response text the model sees."""

from __future__ import annotations

from dataclasses import dataclass

from aster.errors import AsterUserError

STATUSES = ("ok", "error", "timeout", "crashed")


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked (pool closed, session closed, start failed)."""


class SandboxClosedError(SandboxError):
    """The session or the pool was already closed."""


class SandboxBusyError(SandboxError):
    """No session slot became free within sandbox.acquire_timeout_s."""


class SandboxConfinementError(SandboxError, AsterUserError):
    """sandbox.require_confinement is set and this machine cannot confine the sessions fully
    (the CLI prints it on one line and exits 2)."""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one call.

    output: stdout and stderr interleaved as the user would see them, then the traceback if the
    cell raised; truncated head+tail with a marker beyond sandbox.max_output_chars.
    status: ``ok`` / ``error`` (the cell raised, or the input was refused) / ``timeout`` /
    ``crashed`` (the interpreter died). state_reset: a timeout or crash forced a fresh
    interpreter, so the session's variables, functions and imports are gone.
    """

    output: str
    status: str
    duration_s: float
    state_reset: bool = False

    def __post_init__(self):
        assert self.status in STATUSES, self.status

    @property
    def ok(self) -> bool:
        """True when the cell ran to the end without raising."""
        return self.status == "ok"


def format_tool_response(result: ExecResult, empty: str = "(no output)") -> str:
    """The text placed inside <tool_response>: the output, plus a line on timeouts and crashes.

    Tracebacks are already in the output, with line numbers relative to the cell
    (``File "<cell-3>", line 2``).
    """
    text = result.output.replace("\x00", "\\x00")
    if result.status == "timeout" and "TimeoutError" not in text[-300:]:
        text = _join(text, "TimeoutError: the code ran past its time limit and was stopped")
    if result.status == "crashed" and "crashed" not in text[-300:]:
        text = _join(text, "the Python process crashed")
    if result.state_reset and "variables" not in text[-300:]:
        text = _join(text, "(the interpreter was restarted: all variables, functions and "
                           "imports were lost)")
    return text if text.strip() else empty


def _join(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line
