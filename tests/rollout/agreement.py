"""Engine vs trainer log-prob agreement, shared by the HF test and the vLLM subprocess."""

from __future__ import annotations

import torch

from aster.kernels import token_logprobs
from aster.rollout.engine import SamplingParams


def prompts_for(tokenizer) -> list[list[int]]:
    from aster.rollout.chat import encode_prompt, prompt_messages

    problems = ["What is 2 + 3?", "Compute 17 * 23 with Python.", "x = 4; print(x ** 2)"]
    return [encode_prompt(tokenizer, prompt_messages(p)) for p in problems]


@torch.no_grad()
def trainer_logprobs(model, prompt: list[int], response: list[int], temperature: float):
    """What the trainer recomputes: hidden states of a full forward, then token_logprobs."""
    ids = torch.tensor([prompt + response])
    hidden = model.model(input_ids=ids).last_hidden_state[0]
    start = len(prompt) - 1  # position t predicts token t+1
    h = hidden[start:start + len(response)]
    return token_logprobs(h, model.lm_head.weight, torch.tensor(response),
                          temperature=temperature)


def agreement(engine, model, prompts, temperature: float = 1.0, max_new_tokens: int = 24,
              seed: int = 0) -> dict:
    """Sample with `engine`; compare its sampled-token log-probs with the trainer's."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    outputs = engine.generate(prompts, params)
    diffs = []
    for prompt, out in zip(prompts, outputs):
        ref = trainer_logprobs(model, prompt, out.token_ids, temperature)
        diffs.append((ref - torch.tensor(out.logprobs)).abs())
    diff = torch.cat(diffs)
    return {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "tokens": int(diff.numel())}


@torch.no_grad()
def perturb(model, scale: float = 0.05, seed: int = 1) -> None:
    """An 'optimizer step': move every weight by a seeded random amount."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale)
