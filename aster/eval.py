"""avg@k evaluation with the tool (`aster eval`). The `eval:` section is EvalConfig."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    k: int = 16  # samples per problem: avg@k and pass@k
    temperature: float = 0.6
    top_p: float = 0.95
    max_tool_calls: int = 256
    max_tokens: int = 30000  # the token budget (30K or 90K in the paper's tables)
    pass_k: list[int] = field(default_factory=lambda: [1, 16])
    max_problems: int = 0  # 0: all

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"eval.k={self.k!r} must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"eval.top_p={self.top_p!r} must be in (0, 1]")
