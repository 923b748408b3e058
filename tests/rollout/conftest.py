"""Shared fixtures for the rollout tests: one tiny model, its tokenizer, a sandbox pool, and a
scripted engine for the cases a random model cannot produce on demand."""

from __future__ import annotations

import pytest
import torch

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams
from aster.tiny_model import TinyModelConfig, build_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_rollout"), TinyModelConfig(), seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model decode steps are dominated by OpenMP spin-waits on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool():
    from aster.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(SandboxConfig(max_sessions=16, preload=["math"], timeout_s=5.0)) as p:
        yield p


class ScriptedEngine(Engine):
    """Replays fixed assistant turns (text, tokenised canonically, end-of-turn appended) in
    order, one per generate() call for each trajectory; records the prompts it saw. A stand-in
    for the model where the loop's parsing and limits need exact turns."""

    name = "scripted"

    def __init__(self, tokenizer, turns: list[str], end_turn: bool = True, logprob: float = -0.5):
        self.tokenizer = tokenizer
        self.turns = turns
        self.end_turn = end_turn
        self.logprob = logprob
        self.calls: list[list[int]] = []
        self._base: int | None = None  # end-of-turn tokens in a fresh prompt

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        return [self._one(p, sp) for p, sp in zip(prompts, params)]

    def _one(self, prompt: list[int], params: SamplingParams) -> GenerationOutput:
        self.calls.append(list(prompt))
        # Each finished round adds two end-of-turn tokens (assistant turn + tool turn).
        ends = prompt.count(self.tokenizer.eos_token_id)
        self._base = ends if self._base is None else min(self._base, ends)
        index = min((ends - self._base) // 2, len(self.turns) - 1)
        ids = self.tokenizer.encode(self.turns[index], add_special_tokens=False)
        if self.end_turn:
            ids.append(self.tokenizer.eos_token_id)
        reason = "stop"
        if len(ids) > params.max_new_tokens:
            ids, reason = ids[:params.max_new_tokens], "length"
        return GenerationOutput(ids, [self.logprob] * len(ids), reason)

    def load_weights(self, weights) -> None:
        raise NotImplementedError
