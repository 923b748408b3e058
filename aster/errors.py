"""User-facing errors: one line that says what was wrong and what to do; the CLI exits 2."""

from __future__ import annotations


class AsterUserError(Exception):
    """An error caused by the user's input (config, data, model path, device, tool code).

    The CLI prints ``aster: error: <message>`` on one line and exits with status 2. The message
    must name the bad thing and say what to do about it.
    """

    exit_code = 2


class ConfigError(AsterUserError, ValueError):
    """A config key that does not exist or a value that is not valid."""


class DeviceUnavailableError(AsterUserError):
    """The requested device is not present or its software stack is not installed."""


class CapabilityError(AsterUserError):
    """A feature was asked of a backend that does not have it (never a silent no-op)."""
