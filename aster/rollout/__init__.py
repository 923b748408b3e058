"""Multi-turn tool rollouts: chat format, tool-call parsing, engines (hf, vllm continuous,
batched and async), agent loop.

Engines import their heavy dependencies lazily: `from aster.rollout import HFEngine` does not
import vLLM.
"""

from aster.rollout.agent import FINISH_REASONS, Trajectory
from aster.rollout.chat import (
    CODE_INTERPRETER_TOOL,
    ToolCall,
    encode_prompt,
    parse_tool_calls,
    prompt_messages,
)
from aster.rollout.chat_format import ChatFormat, ChatTemplateError, chat_format
from aster.rollout.config import RolloutConfig
from aster.rollout.engine import Engine, GenerationOutput, SamplingParams, build_engine
from aster.rollout.loop import AgentLoop, run_rollouts
from aster.rollout.metrics import rollout_metrics

__all__ = [
    "CODE_INTERPRETER_TOOL", "FINISH_REASONS", "AgentLoop", "ChatFormat", "ChatTemplateError",
    "Engine", "GenerationOutput", "HFEngine", "RolloutConfig", "SamplingParams", "ToolCall",
    "Trajectory", "chat_format",
    "VLLMAsyncEngine", "VLLMEngine", "VLLMStreamEngine", "build_engine", "encode_prompt", "parse_tool_calls", "prompt_messages",
    "rollout_metrics", "run_rollouts",
]


def __getattr__(name):
    if name == "HFEngine":
        from aster.rollout.hf_engine import HFEngine

        return HFEngine
    if name == "VLLMEngine":
        from aster.rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "VLLMStreamEngine":
        from aster.rollout.vllm_stream import VLLMStreamEngine

        return VLLMStreamEngine
    if name == "VLLMAsyncEngine":
        from aster.rollout.vllm_async import VLLMAsyncEngine

        return VLLMAsyncEngine
    raise AttributeError(f"module 'aster.rollout' has no attribute {name!r}")
