"""SFT conversations to token ids and loss masks, exactly as a rollout builds them.

A conversation is encoded the way the agent loop generated it (aster.rollout.chat_format): the
prompt rendered with the generation prompt (mask 0), then per assistant turn the turn as the
model samples it through its end-of-turn token (mask 1), then the tool turn the template puts
after it together with the next generation prompt (mask 0). The ids are those the model
produced and saw turn by turn, whatever the template does to earlier turns when it re-renders a
whole conversation (real Qwen3 drops empty ``<think>`` blocks and the reasoning of turns before
the last user message).

A later user message starts a new query: the model then saw the history as the template renders
it, so that turn's context is rendered afresh. When that rendering extends the ids so far
(append-only templates) the conversation stays one sequence; otherwise it becomes one training
sequence per query, each assistant turn trained once, in its own query's sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aster.data.io import DataError, Skipped
from aster.rollout.chat_format import TurnRenderError, chat_format
from aster.rollout.tools import same_schemas

log = logging.getLogger("aster")


@dataclass
class Encoded:
    """One tokenised sequence: ids and the 0/1 loss mask over them (1 = sampled by the model)."""

    ids: list[int]
    mask: list[int]

    def extend(self, ids: list[int], value: int) -> None:
        self.ids += ids
        self.mask += [value] * len(ids)


def encode_segments(tokenizer, messages: list[dict], tools=None) -> list[Encoded]:
    """The training sequences of one conversation (one per user query unless the template
    renders the later queries append-only). ValueError when a turn cannot be rendered."""
    fmt = chat_format(tokenizer, tools)
    segments: list[Encoded] = []
    current: Encoded | None = None
    continuing = False  # the ids end with a tool turn that opened this assistant turn
    i, n = 0, len(messages)
    while i < n:
        if messages[i]["role"] != "assistant":
            i += 1
            continue
        if not continuing:
            context = fmt.prompt_ids(messages[:i])
            if current is not None and context[:len(current.ids)] == current.ids:
                current.extend(context[len(current.ids):], 0)
            else:
                if current is not None:
                    segments.append(current)
                current = Encoded([], [])
                current.extend(context, 0)
        current.extend(fmt.assistant_ids(messages[i]), 1)
        j = i + 1
        outputs = []
        while j < n and messages[j]["role"] == "tool":
            outputs.append(messages[j]["content"])
            j += 1
        continuing = bool(outputs) and j < n and messages[j]["role"] == "assistant"
        if continuing:
            current.extend(fmt.tool_ids(outputs), 0)
        i = j
    if current is not None:
        segments.append(current)
    return segments


def encode_conversation(tokenizer, messages: list[dict], tools=None) -> Encoded:
    """The one training sequence of a single-query conversation (a tool trajectory)."""
    segments = encode_segments(tokenizer, messages, tools)
    if len(segments) != 1:
        raise ValueError(f"the conversation encodes to {len(segments)} sequences, not one; use "
                         "encode_segments")
    return segments[0]


def encode_dataset(tokenizer, examples: list[dict], cutoff_len: int,
                   tools: list[dict] | None = None) -> tuple[list[Encoded], int]:
    """Encode every example. Sequences longer than cutoff_len are dropped (never truncated) and
    counted; an example the chat template cannot render is skipped and logged with its reason.
    `tools` (rollout.tools' schemas): every example is rendered with them, as RL and eval
    render their prompts; None keeps each example's own. Returns (sequences, number dropped
    over the cutoff)."""
    if tools is not None:
        _say_replaced_schemas(examples, tools)
    kept, dropped, skipped = [], 0, Skipped()
    for index, ex in enumerate(examples):
        try:
            segments = encode_segments(tokenizer, ex["messages"],
                                       tools if tools is not None else ex.get("tools"))
        except (TurnRenderError, ValueError, TypeError, KeyError) as exc:
            skipped.add(index, f"the chat template cannot encode it ({exc})")
            continue
        segments = [s for s in segments if any(s.mask)]
        if not segments:
            skipped.add(index, "no assistant turn to train on")
        for seg in segments:
            if len(seg.ids) > cutoff_len:
                dropped += 1
            else:
                kept.append(seg)
    if skipped.count:
        log.warning("sft: skipped %d of %d conversations (first: %s)", skipped.count,
                    len(examples), "; ".join(skipped.reasons))
    if dropped:
        log.warning("sft: dropped %d sequences over sft.cutoff_len=%d (not truncated)", dropped,
                    cutoff_len)
    if examples and not kept:
        why = skipped.reasons[0] if skipped.reasons else f"all longer than {cutoff_len} tokens"
        raise DataError(f"no SFT sequence is left to train on (first: {why}); raise "
                        "sft.cutoff_len or check the data")
    return kept, dropped


def _say_replaced_schemas(examples: list[dict], tools: list[dict]) -> None:
    """One log line when the data's own tool schema is not the one rendered."""
    other = [ex["tools"] for ex in examples if ex.get("tools") and
             not same_schemas(ex["tools"], tools)]
    if other:
        desc = other[0][0].get("function", {}).get("description", "")
        log.warning("sft: %d of %d conversations carry another tool schema (e.g. %r); they are "
                    "rendered with rollout.tools, as RL and eval render theirs (set "
                    "rollout.tools to the data's schema to train on it)", len(other),
                    len(examples), desc[:60])
