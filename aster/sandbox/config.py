"""SandboxConfig: limits and preloads of the stateful Python sandbox (the `sandbox:` section)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SandboxConfig:
    """Limits are per call unless named per session."""

    timeout_s: float = 10.0
    max_sessions: int = 64
    spare_workers: int = 2
    memory_mb: int = 2048
    max_output_chars: int = 8192
    preload: list[str] = field(default_factory=lambda: ["math", "sympy", "numpy", "itertools",
                                                        "fractions"])

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"sandbox.timeout_s={self.timeout_s!r} must be > 0")
        if self.max_sessions < 1:
            raise ValueError(f"sandbox.max_sessions={self.max_sessions!r} must be >= 1")
