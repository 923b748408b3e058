"""Engine vs trainer log-prob agreement, shared by the HF test and the vLLM subprocesses."""

from __future__ import annotations

import torch

from aster.kernels import token_logprobs
from aster.rollout.engine import Engine, GenerationOutput, SamplingParams


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


APPENDED = 1.0  # the log-prob ToolInjectingEngine gives tokens it appended (never a real one)
CALL_CODE = "acc = globals().get('acc', 0) + {n}\nprint(acc * 3 + 1)"


class ToolInjectingEngine(Engine):
    """Wraps a real engine so that a random tiny model yields multi-turn tool trajectories:
    each turn is `think` tokens the model really samples, then a fixed code_interpreter call
    appended with log-prob APPENDED (the model cannot write one); after `calls` rounds a boxed
    answer. Continuous batching passes through."""

    def __init__(self, inner: Engine, tokenizer, think: int = 12, calls: int = 2):
        self.inner, self.tokenizer, self.think, self.calls = inner, tokenizer, think, calls
        self.name = f"{inner.name}+tools"
        self.continuous_batching = inner.continuous_batching
        self._base: int | None = None

    def _think(self, params: SamplingParams) -> SamplingParams:
        return SamplingParams(**{**vars(params), "stop_token_ids": [],
                                 "max_new_tokens": min(self.think, params.max_new_tokens)})

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        outs = self.inner.generate(prompts, [self._think(p) for p in params])
        return [self._finish(pr, out) for pr, out in zip(prompts, outs)]

    async def agenerate(self, prompt, params):
        return self._finish(prompt, await self.inner.agenerate(prompt, self._think(params)))

    def _finish(self, prompt, out: GenerationOutput) -> GenerationOutput:
        import json

        eos = self.tokenizer.eos_token_id
        ends = prompt.count(eos)
        self._base = ends if self._base is None else min(self._base, ends)
        turn = (ends - self._base) // 2
        if turn < self.calls:
            call = {"name": "code_interpreter", "arguments": {"code": CALL_CODE.format(n=turn)}}
            tail = "\n\n<tool_call>\n" + json.dumps(call) + "\n</tool_call>"
        else:
            tail = "\n\nThe answer is \\boxed{7}."
        # cut at a sampled end-of-turn: what follows it was conditioned on it
        n = out.token_ids.index(eos) if eos in out.token_ids else len(out.token_ids)
        extra = self.tokenizer.encode(tail, add_special_tokens=False) + [eos]
        return GenerationOutput(out.token_ids[:n] + extra,
                                out.logprobs[:n] + [APPENDED] * len(extra), "stop")

    def load_weights(self, weights) -> None:
        self.inner.load_weights(weights)


def check_trajectories(trajs, model, tokenizer, temperature: float = 1.0) -> dict:
    """Structure of tool trajectories from ToolInjectingEngine (lengths, masks, tool turns) and
    the engine's sampled-token log-probs vs the trainer's recompute over the whole context."""
    from aster.rollout.chat_format import chat_format

    tool_prefix = chat_format(tokenizer).tool_ids(["X"])[:2]
    diffs, problems = [], []
    for n, t in enumerate(trajs):
        spans = _zero_spans(t.loss_mask)
        checks = {
            "lengths": len(t.response_ids) == len(t.loss_mask) == len(t.rollout_logprobs),
            "masked log-probs are 0": all(lp == 0.0 for lp, m in
                                          zip(t.rollout_logprobs, t.loss_mask) if not m),
            # every turn but the answer is followed by one tool turn (its calls' outputs,
            # or the error message for a malformed call: a random model can sample the
            # <tool_call> token)
            "one masked span after each turn": len(spans) == t.num_turns - 1,
            "masked spans are tool turns": all(
                t.response_ids[s:s + 2] == tool_prefix
                and "<tool_response>" in tokenizer.decode(t.response_ids[s:e])
                for s, e in spans)}
        problems += [f"trajectory {n}: {name}" for name, ok in checks.items() if not ok]
        ref = trainer_logprobs(model, t.prompt_ids, t.response_ids, temperature)
        keep = [i for i, (m, lp) in enumerate(zip(t.loss_mask, t.rollout_logprobs))
                if m and lp != APPENDED]
        diffs.append((ref[keep] - torch.tensor([t.rollout_logprobs[i] for i in keep])).abs())
    diff = torch.cat(diffs)
    return {"problems": problems, "mean_abs_diff": float(diff.mean()),
            "max_abs_diff": float(diff.max()), "tokens": int(diff.numel()),
            "tool_calls": [t.num_tool_calls for t in trajs],
            "finish_reasons": sorted({t.finish_reason for t in trajs})}


def _zero_spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, m in enumerate([*mask, 1]):
        if not m and start is None:
            start = i
        elif m and start is not None:
            spans.append((start, i))
            start = None
    return spans
