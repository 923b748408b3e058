"""DataConfig: the `data:` section (SFT trajectories, RL prompts, eval sets, the synthetic task)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SyntheticTaskConfig:
    """The embedded tiny default's task: multi-step arithmetic that needs stateful tool calls."""

    num_sft: int = 256
    num_rl: int = 128
    num_eval: int = 64
    min_steps: int = 2
    max_steps: int = 4
    max_operand: int = 999
    max_value: int = 10**7  # every intermediate value stays in [0, max_value]
    # an imperfect teacher: this fraction of SFT trajectories answer with an intermediate value
    # after a random earlier step (wrong); RL's reward is what teaches the model to finish
    early_answer_prob: float = 0.0
    # teacher trajectories per SFT problem, each drawing its own early answer: the model then
    # sees both endings of one problem and learns the teacher's rate, not a per-problem coin
    samples_per_problem: int = 1
    seed: int = 1234

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"data.synthetic.seed={self.seed!r} must be >= 0")
        if self.samples_per_problem < 1:
            raise ValueError(f"data.synthetic.samples_per_problem={self.samples_per_problem!r} "
                             "must be >= 1")
        for key in ("num_sft", "num_rl", "num_eval"):
            if getattr(self, key) < 0:
                raise ValueError(f"data.synthetic.{key}={getattr(self, key)!r} must be >= 0")
        if not 1 <= self.min_steps <= self.max_steps <= 8:
            raise ValueError(f"data.synthetic.min_steps={self.min_steps!r} / max_steps="
                             f"{self.max_steps!r} must satisfy 1 <= min_steps <= max_steps <= 8")
        if self.max_value < 10:
            raise ValueError(f"data.synthetic.max_value={self.max_value!r} must be >= 10")
        if not 0.0 <= self.early_answer_prob < 1.0:
            raise ValueError(f"data.synthetic.early_answer_prob={self.early_answer_prob!r} must "
                             "be in [0, 1)")
        if self.max_operand < 10:
            raise ValueError(f"data.synthetic.max_operand={self.max_operand!r} must be >= 10")


@dataclass
class DataConfig:
    """Where the data come from. `synthetic` means: generate the tiny task in-process."""

    sft_path: str = "synthetic"  # parquet / jsonl (ASTER_SFT4K, OpenAI messages, aster jsonl)
    rl_path: str = "synthetic"  # verl/DAPO parquet or jsonl {problem, answer}
    eval_paths: list[str] = field(default_factory=lambda: ["synthetic"])
    min_tool_calls: int = 9  # interaction-density filter for SFT trajectories
    max_rows: int = 0  # 0: all
    synthetic: SyntheticTaskConfig = field(default_factory=SyntheticTaskConfig)

    def __post_init__(self):
        if self.min_tool_calls < 0:
            raise ValueError(f"data.min_tool_calls={self.min_tool_calls!r} must be >= 0")
        if self.max_rows < 0:
            raise ValueError(f"data.max_rows={self.max_rows!r} must be >= 0 (0: all)")
