"""Multi-turn tool rollouts: chat format, tool-call parsing, engines (hf, vllm continuous,
batched and async), agent loop.

The engines live in their own modules (aster.rollout.hf_engine, vllm_engine, ...) and
aster.rollout.factory.build_engine picks one; importing this package loads neither
transformers nor vLLM.
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
from aster.rollout.engine import Engine, GenerationOutput, SamplingParams
from aster.rollout.loop import AgentLoop, run_rollouts
from aster.rollout.metrics import rollout_metrics

__all__ = [
    "CODE_INTERPRETER_TOOL", "FINISH_REASONS", "AgentLoop", "ChatFormat", "ChatTemplateError",
    "Engine", "GenerationOutput", "RolloutConfig", "SamplingParams", "ToolCall", "Trajectory",
    "chat_format", "encode_prompt", "parse_tool_calls", "prompt_messages", "rollout_metrics",
    "run_rollouts",
]

