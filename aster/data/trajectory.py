"""Agent-loop trajectories (token ids + loss mask) back into the SFT internal form.

A `aster.rollout.Trajectory` holds the prompt ids and then alternating runs of sampled ids
(loss mask 1: an assistant turn ending in its end-of-turn token, or cut off by the budget) and
templated tool-turn ids (mask 0: the tool messages and the next generation prompt).
`TrajectoryConverter.example` decodes each sampled run into an assistant message (reasoning
kept as ``<think>...</think>`` in its content, ``<tool_call>`` blocks after it parsed into
``tool_calls``) and inverts each tool run into its tool messages with the tokenizer's own
template (aster.rollout.chat_format). Encoding the messages for SFT (aster.train.sft_encoding)
gives back the trajectory's ids and loss mask whenever the model spelled its turns the way the
template renders them (reasoning between ``<think>\n`` and ``\n</think>\n\n``, calls as the
template's JSON); tests/train/test_round_trip.py checks it under each template.
"""

from __future__ import annotations

import re

from aster.data.formats import CODE_INTERPRETER_TOOL, make_call
from aster.rollout.chat import parse_tool_calls, split_reasoning
from aster.rollout.chat_format import chat_format
from aster.rollout.loop import stop_token_ids

_CALL_BLOCK = re.compile(r"\s*<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)


class ConversionError(ValueError):
    """Why a trajectory cannot become an SFT example (the message is the reason)."""


def mask_runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal mask values as (start, end, value)."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((start, i, mask[start]))
            start = i
    return runs


def with_open_think(text: str) -> str:
    """`text` with `<think>` restored in front when the generation prompt supplied it (the
    Qwen3 thinking templates end the prompt with `<think>\\n`; the sampled text starts inside)."""
    head, sep, _ = text.partition("</think>")
    if sep and "<think>" not in head:
        return "<think>\n" + text.lstrip("\n")
    return text


class TrajectoryConverter:
    """Converts trajectories sampled with `tokenizer`'s chat template (and `tools`)."""

    def __init__(self, tokenizer, tools=None):
        self.tokenizer = tokenizer
        self.tools = tools or [CODE_INTERPRETER_TOOL]
        self.format = chat_format(tokenizer, self.tools)
        self.stops = set(stop_token_ids(tokenizer))
        self._patterns: dict[int, re.Pattern] = {}
        self.opens_think = self.format.opens_think  # sampled text starts inside <think>

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def tool_outputs(self, text: str, n: int) -> list[str]:
        """The n tool outputs inside a decoded tool turn."""
        if n not in self._patterns:
            self._patterns[n] = self.format.tool_pattern(n)
        match = self._patterns[n].fullmatch(text)
        if match is None:
            raise ConversionError(f"a tool turn does not match the chat template's tool turn "
                                  f"for {n} outputs")
        return list(match.groups())

    def assistant_message(self, ids: list[int], executed: bool) -> dict:
        """One sampled run as an assistant message; its calls parsed when they were executed
        (a tool turn follows), else kept as sampled text."""
        if ids and ids[-1] in self.stops:
            ids = ids[:-1]
        text = self._decode(ids)
        text = with_open_think(text) if self.opens_think else text
        if not executed:
            return {"role": "assistant", "content": text.strip()}
        calls = parse_tool_calls(text)
        bad = [c.error for c in calls if c.error is not None]
        if bad:
            raise ConversionError(f"malformed tool call ({bad[0]})")
        if not calls:
            raise ConversionError("a tool turn follows an assistant turn without calls")
        reasoning, answer = split_reasoning(text)
        content = (reasoning + _CALL_BLOCK.sub("", answer).rstrip()).strip()
        return {"role": "assistant", "content": content,
                "tool_calls": [make_call(c.code) for c in calls]}

    def example(self, traj, messages: list[dict], answer: str | None = None) -> dict:
        """The internal SFT form of `traj`, whose prompt rendered `messages`."""
        out = [dict(m) for m in messages]
        runs = mask_runs(traj.loss_mask)
        pending = 0
        for k, (start, end, sampled) in enumerate(runs):
            ids = traj.response_ids[start:end]
            if sampled:
                msg = self.assistant_message(ids, executed=k + 1 < len(runs))
                pending = len(msg.get("tool_calls", []))
                out.append(msg)
                continue
            if pending == 0:
                raise ConversionError("a tool turn answers no call")
            out += [{"role": "tool", "content": o}
                    for o in self.tool_outputs(self._decode(ids), pending)]
            pending = 0
        if not any(m["role"] == "assistant" for m in out):
            raise ConversionError("no assistant turn was sampled")
        return {"messages": out, "tools": self.tools, "answer": answer}
