"""RolloutConfig: the `rollout:` section (engine and agent-loop limits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RolloutConfig:
    """Sampling and agent-loop settings used by RL rollouts (eval has its own)."""

    engine: Literal["auto", "hf", "vllm"] = "auto"  # auto: the backend's default engine
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tool_calls: int = 50
    max_response_tokens: int = 16384  # tool-output tokens count toward it
    max_tool_output_chars: int = 4096  # truncated head+tail beyond this
    tool_timeout_s: float = 10.0
    max_concurrency: int = 256  # trajectories in flight at once (the hf engine: its batch)
    max_parse_errors: int = 3  # consecutive turns with only malformed calls -> tool_parse_error
    # vLLM only
    # batched: the agent loop gathers each turn's requests into one in-process LLM.generate;
    # async: AsyncLLM, every trajectory sends its own request into vLLM's continuous batch.
    # Batched is the default because it measured faster: bench/bench_rollout.py --full on the
    # 2-core CPU box, 64 trajectories, two runs: async took 3.7-5.8x (free sampling), 3.4-7.3x
    # (6 tool calls each) and 4.7-7.9x (6 calls, uneven turns) the wall time of batched.
    # AsyncLLM runs its engine core in another process, so every decode step crosses a process
    # boundary and competes for the cores with the agent loop and the sandboxes. Not yet
    # measured on GPUs.
    vllm_mode: Literal["batched", "async"] = "batched"
    # uni: one engine in one process; external_launcher: one engine per torchrun rank, in the
    # training process, joining the trainer's process group; auto: external_launcher when
    # WORLD_SIZE > 1 (batched mode only)
    vllm_executor: Literal["auto", "uni", "external_launcher"] = "auto"
    gpu_memory_utilization: float = 0.6
    # the weight push streams compute-dtype tensors into the engine in buckets of about this
    # size (one parameter larger than it goes alone): the push holds one bucket plus the
    # largest parameter beside the engine's weights, never a full copy
    weight_bucket_mb: int = 512
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"rollout.temperature={self.temperature!r} must be >= 0")
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"rollout.top_k={self.top_k!r} must be -1 (off) or >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"rollout.tensor_parallel_size={self.tensor_parallel_size!r} must "
                             "be >= 1")
        if self.seed < 0:
            raise ValueError(f"rollout.seed={self.seed!r} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p={self.top_p!r} must be in (0, 1]")
        for key in ("max_tool_calls", "max_response_tokens", "max_concurrency",
                    "max_parse_errors", "max_tool_output_chars"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key}={getattr(self, key)!r} must be >= 1")
        if self.tool_timeout_s <= 0:
            raise ValueError(f"rollout.tool_timeout_s={self.tool_timeout_s!r} must be > 0")
        if self.vllm_mode == "async" and self.vllm_executor == "external_launcher":
            raise ValueError("rollout.vllm_executor=external_launcher needs "
                             "rollout.vllm_mode=batched (AsyncLLM runs its own engine process)")
        if not 1 <= self.weight_bucket_mb <= 65536:
            raise ValueError(f"rollout.weight_bucket_mb={self.weight_bucket_mb!r} must be in "
                             "[1, 65536] (MiB per bucket of the weight push)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization!r} "
                             "must be in (0, 1]")
