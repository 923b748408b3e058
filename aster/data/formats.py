"""SFT trajectories: one internal form, read from and written back to the common layouts.

The internal form of one trajectory is a dict
``{"messages": [...], "tools": [...] | None, "answer": str | None}`` where ``messages`` are chat
messages as Hugging Face chat templates (Qwen3 included) take them: roles system / user /
assistant / tool; an assistant turn keeps its reasoning in its content as ``<think>...</think>``
(the Qwen3 template splits it off there) and its calls in ``tool_calls`` as
``[{"type": "function", "function": {"name": ..., "arguments": {dict}}}]``.

Layouts (detected per file, written back in the layout read):
- ``sharegpt``: the ASTER_SFT4K / LlamaFactory parquet: ``conversations`` of {role, content}
  with roles user / function (reasoning + a ``{"name", "arguments"}`` call, a list of them, or
  calls wrapped in ``<tool_call>...</tool_call>``) / tool / assistant, and ``tools`` as a JSON
  string (``from``/``value`` with human / gpt / function_call / observation is read as well; a
  turn's ``reasoning_content`` becomes its think block).
- ``openai``: ``messages`` with ``tool_calls`` whose ``arguments`` are JSON strings, reasoning
  possibly in ``reasoning_content``.
- ``aster``: ``messages`` in the internal form, one JSON object a line.

In every layout, only the text after an assistant turn's reasoning (its last ``</think>``) holds
calls: a ``<tool_call>`` the reasoning mentions stays reasoning; ``<tool_call>`` blocks in an
assistant turn's text become its ``tool_calls``. Empty reasoning (``<think>\n\n</think>``)
is kept as written: the chat template decides how it renders.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from aster.data.io import Skipped, file_kind, is_bad_line, read_rows, require_columns, write_rows
from aster.rollout.chat import (  # noqa: F401 (CODE_INTERPRETER_TOOL, TOOL_NAME re-exported)
    CODE_INTERPRETER_TOOL,
    TOOL_NAME,
    split_reasoning,
)

# One tool schema for SFT data, rollouts and eval: the rollout chat module owns it.
LAYOUTS = ("sharegpt", "openai", "aster")
_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "function",
                   "observation": "tool", "user": "user", "assistant": "assistant",
                   "function": "function", "tool": "tool", "system": "system"}


class RowError(ValueError):
    """One malformed row; the message is the reason reported."""


@dataclass
class LoadedSFT:
    """Trajectories in the internal form, the layout they were read in, and what was skipped."""

    examples: list[dict]
    layout: str
    file_kind: str
    skipped: Skipped = field(default_factory=Skipped)
    rows: list[dict] = field(default_factory=list)  # the raw rows, aligned with `examples`


def make_call(code: str, name: str = TOOL_NAME) -> dict:
    """One tool call in the internal form."""
    return {"type": "function", "function": {"name": name, "arguments": {"code": code}}}


def with_think(reasoning: str, text: str = "") -> str:
    """Assistant content with its reasoning in front as `<think>...</think>`."""
    reasoning = reasoning.strip()
    if "<think>" in reasoning or not reasoning:
        head = reasoning
    else:
        head = f"<think>\n{reasoning}\n</think>"
    return f"{head}\n\n{text}".strip() if text.strip() else head


def _parse_arguments(args) -> dict:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise RowError(f"tool-call arguments are not JSON ({exc.msg})") from exc
    if not isinstance(args, dict):
        raise RowError(f"tool-call arguments must be an object, got {type(args).__name__}")
    return args


def _normalise_call(call) -> dict:
    if not isinstance(call, dict):
        raise RowError("a tool call is not an object")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RowError("a tool call has no function name")
    return {"type": "function",
            "function": {"name": fn["name"], "arguments": _parse_arguments(fn.get("arguments"))}}


def _normalise_message(msg) -> dict:
    if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant", "tool"):
        role = msg.get("role") if isinstance(msg, dict) else type(msg).__name__
        raise RowError(f"message role {role!r} is not system/user/assistant/tool")
    content = msg.get("content") or ""
    if not isinstance(content, str):
        raise RowError(f"{msg['role']} content is not text")
    if msg.get("reasoning_content"):
        content = with_think(msg["reasoning_content"], content)
    out = {"role": msg["role"], "content": content}
    calls = msg.get("tool_calls") or []
    if calls:
        if msg["role"] != "assistant":
            raise RowError(f"a {msg['role']} message carries tool_calls")
        out["tool_calls"] = [_normalise_call(c) for c in calls]
    return out


def _call_list(value) -> list[dict] | None:
    calls = value if isinstance(value, list) else [value]
    if calls and all(isinstance(c, dict) and "name" in c for c in calls):
        return [_normalise_call(c) for c in calls]
    return None


def _trailing_json_calls(text: str) -> tuple[str, list[dict]] | None:
    """(text before, calls) when `text` ends with one JSON call or a list of them."""
    decoder = json.JSONDecoder()
    for start in [i for i, ch in enumerate(text) if ch in "{["]:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if text[end:].strip():
            continue
        calls = _call_list(value)
        if calls:
            return text[:start], calls
    return None


def _tagged_calls(answer: str) -> tuple[str, list[dict]] | None:
    """(text outside the blocks, calls) of `<tool_call>{json}</tool_call>` blocks, or None."""
    bodies = _TAGGED_CALL.findall(answer)
    if not bodies:
        return None
    calls = []
    for body in bodies:
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            raise RowError(f"a <tool_call> block is not JSON ({exc.msg})") from exc
        found = _call_list(value)
        if found is None:
            raise RowError("a <tool_call> block holds no {\"name\", \"arguments\"} call")
        calls += found
    return _TAGGED_CALL.sub("", answer).rstrip(), calls


def _split_function_turn(content: str) -> tuple[str, list[dict]]:
    """Reasoning and calls of a sharegpt `function` turn: ``<think>reasoning</think>`` (or plain
    text) then one JSON call, a list of them, or ``<tool_call>``-wrapped calls. Only the text
    after the reasoning is searched: a `<tool_call>` the reasoning mentions is not a call."""
    reasoning, answer = split_reasoning(content)
    try:
        found = _tagged_calls(answer)
    except RowError:
        # plain-text reasoning that names the tag, then a bare JSON call
        found = _trailing_json_calls(answer)
        if found is None:
            raise
    found = found or _trailing_json_calls(answer)
    if found is None:
        raise RowError("a function turn holds no {\"name\", \"arguments\"} call")
    text, calls = found
    return reasoning + text, calls


def _inline_calls(message: dict) -> dict:
    """An assistant message whose text carries `<tool_call>` blocks after its reasoning, with
    those blocks moved to `tool_calls` (as the chat template renders them back)."""
    if message["role"] != "assistant" or message.get("tool_calls"):
        return message
    reasoning, answer = split_reasoning(message["content"])
    found = _tagged_calls(answer)
    if found is None:
        return message
    text, calls = found
    return {**message, "content": (reasoning + text).strip(), "tool_calls": calls}


def _from_sharegpt(row: dict) -> dict:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("`conversations` is missing or empty")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise RowError("a conversation turn is not an object")
        role = _SHAREGPT_ROLES.get(turn.get("role", turn.get("from")))
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise RowError(f"turn role {turn.get('role', turn.get('from'))!r} unknown or no text")
        reasoning = turn.get("reasoning_content")
        if role == "function":
            text, calls = _split_function_turn(content)
            if isinstance(reasoning, str) and reasoning.strip() and "</think>" not in text:
                text = with_think(reasoning, text)
            messages.append({"role": "assistant", "content": with_think(text),
                             "tool_calls": calls})
            continue
        if role == "assistant" and isinstance(reasoning, str) and reasoning.strip():
            content = with_think(reasoning, content)
        messages.append(_inline_calls({"role": role, "content": content}))
    return {"messages": messages, "tools": _parse_tools(row.get("tools")),
            "answer": _answer_of(row)}


def _parse_tools(tools):
    if tools is None or tools == "":
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise RowError(f"`tools` is not JSON ({exc.msg})") from exc
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise RowError("`tools` is not a list of schemas")
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def _answer_of(row: dict):
    for key in ("answer", "ground_truth"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    reward = row.get("reward_model")
    if isinstance(reward, dict) and reward.get("ground_truth") not in (None, ""):
        return str(reward["ground_truth"])
    return None


def _from_messages(row: dict) -> dict:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("`messages` is missing or empty")
    return {"messages": [_inline_calls(_normalise_message(m)) for m in messages],
            "tools": _parse_tools(row.get("tools")), "answer": _answer_of(row)}


def validate_example(example: dict) -> None:
    """Raise RowError unless the trajectory is usable for SFT (a user turn, an assistant turn,
    every tool message answering a call)."""
    roles = [m["role"] for m in example["messages"]]
    if "user" not in roles:
        raise RowError("no user turn")
    if "assistant" not in roles:
        raise RowError("no assistant turn")
    pending = 0
    for msg in example["messages"]:
        if msg["role"] == "tool":
            if pending == 0:
                raise RowError("a tool message answers no call")
            pending -= 1
        else:
            pending = len(msg.get("tool_calls", []))


def detect_layout(rows: list) -> str:
    """The SFT layout of a file, from its first decodable row."""
    for row in rows:
        if not isinstance(row, dict):
            continue
        if "conversations" in row:
            return "sharegpt"
        if "messages" in row:
            # a malformed row decides nothing: the loader skips and counts it later
            messages = row["messages"] if isinstance(row["messages"], list) else []
            for msg in messages:
                calls = msg.get("tool_calls") if isinstance(msg, dict) else None
                for call in calls if isinstance(calls, list) else []:
                    fn = call.get("function") if isinstance(call, dict) else None
                    args = fn.get("arguments") if isinstance(fn, dict) else None
                    return "openai" if isinstance(args, str) else "aster"
            return "aster"
    return "aster"


def load_sft(path: str | os.PathLike, max_rows: int = 0) -> LoadedSFT:
    """Load SFT trajectories from any supported layout; malformed rows skipped and reported."""
    rows, kind = read_rows(path)
    require_columns(rows, path, {"conversations", "messages"}, "SFT trajectories")
    layout = detect_layout(rows)
    convert = _from_sharegpt if layout == "sharegpt" else _from_messages
    loaded = LoadedSFT(examples=[], layout=layout, file_kind=kind)
    for index, row in enumerate(rows):
        try:
            if is_bad_line(row) or not isinstance(row, dict):
                raise RowError(is_bad_line(row) or "row is not an object")
            example = convert(row)
            validate_example(example)
        except RowError as exc:
            loaded.skipped.add(index, str(exc))
            continue
        loaded.examples.append(example)
        loaded.rows.append(row)
        if max_rows and len(loaded.examples) >= max_rows:
            break
    loaded.skipped.report(str(path), len(loaded.examples))
    return loaded


def _args_json(call: dict) -> str:
    return json.dumps(call["function"]["arguments"], ensure_ascii=False)


def _to_sharegpt(example: dict) -> dict:
    turns = []
    for msg in example["messages"]:
        if msg.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in msg["tool_calls"]]
            call_json = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            body = msg["content"].strip()
            turns.append({"role": "function",
                          "content": f"{body}\n\n{call_json}" if body else call_json})
        else:
            turns.append({"role": msg["role"], "content": msg["content"]})
    return {"conversations": turns,
            "tools": json.dumps(example.get("tools") or [CODE_INTERPRETER_TOOL])}


def _to_messages(example: dict, layout: str) -> dict:
    messages = []
    for msg in example["messages"]:
        out = {"role": msg["role"], "content": msg["content"]}
        if msg.get("tool_calls"):
            out["tool_calls"] = [
                {"type": "function", "function": {
                    "name": c["function"]["name"],
                    "arguments": _args_json(c) if layout == "openai" else c["function"]["arguments"]}}
                for c in msg["tool_calls"]]
        messages.append(out)
    row = {"messages": messages, "tools": example.get("tools")}
    if example.get("answer") is not None:
        row["answer"] = example["answer"]
    return row


def sft_row(example: dict, layout: str, file_kind: str = "jsonl") -> dict:
    """One internal trajectory as a row of `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {', '.join(LAYOUTS)}")
    if layout == "sharegpt":
        return _to_sharegpt(example)
    row = _to_messages(example, layout)
    if file_kind == "parquet":  # parquet needs one schema: keep the free-form parts as JSON text
        row["tools"] = json.dumps(row["tools"]) if row["tools"] is not None else None
        if layout == "aster":
            for msg in row["messages"]:
                for call in msg.get("tool_calls", []):
                    call["function"]["arguments"] = _args_json(call)
    return row


def write_sft(examples: list[dict], path: str | os.PathLike, layout: str = "aster") -> None:
    """Write trajectories in `layout` (parquet or jsonl from the file name), atomically."""
    kind = file_kind(path)
    write_rows([sft_row(e, layout, kind) for e in examples], path)
