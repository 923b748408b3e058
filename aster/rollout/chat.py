"""The Qwen3 / Hermes tool conversation format: prompts and tool-call parsing.

Everything is rendered with the tokenizer's own chat template, so a real Qwen3 tokenizer and
the tiny one behave the same; the pieces of a multi-turn tool conversation (the turn as sampled,
the tool turn after it) come from aster.rollout.chat_format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

TOOL_NAME = "code_interpreter"
CODE_INTERPRETER_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": ("Run Python code in a stateful interpreter (variables, functions and "
                        "imports persist across calls) and return what it prints."),
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to run."}},
            "required": ["code"],
        },
    },
}
ANSWER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def user_message(problem: str) -> dict:
    """The user turn of docs/recipe.md: the problem followed by the boxed-answer instruction."""
    return {"role": "user", "content": f"{problem.rstrip()}\n\n{ANSWER_INSTRUCTION}"}


def prompt_messages(problem: str, system: str | None = None) -> list[dict]:
    """The messages of a fresh problem (an optional system turn, then the user turn)."""
    head = [{"role": "system", "content": system}] if system else []
    return [*head, user_message(problem)]


def apply_template(tokenizer, messages: list[dict], *, tools=None,
                   add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (tools default to the code interpreter)."""
    return tokenizer.apply_chat_template(
        messages, tools=[CODE_INTERPRETER_TOOL] if tools is None else tools, tokenize=False,
        add_generation_prompt=add_generation_prompt)


def encode_prompt(tokenizer, messages: list[dict], tools=None) -> list[int]:
    """Token ids of `messages` rendered with the generation prompt (the rollout's prompt)."""
    text = apply_template(tokenizer, messages, tools=tools, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


@dataclass
class ToolCall:
    """One parsed call; `error` is set (and `code` empty) when the call is malformed."""

    code: str = ""
    error: str | None = None
    raw: str = ""


def _parse_one(raw: str) -> ToolCall:
    body = raw.strip()
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall(error=f"the tool call is not valid JSON ({exc.msg} at line "
                              f"{exc.lineno} column {exc.colno})", raw=raw)
    if not isinstance(call, dict):
        return ToolCall(error="the tool call must be a JSON object with \"name\" and "
                              "\"arguments\"", raw=raw)
    name = call.get("name")
    if name != TOOL_NAME:
        return ToolCall(error=f"unknown tool {name!r}; the only tool is {TOOL_NAME!r}", raw=raw)
    args = call.get("arguments")
    if isinstance(args, str):  # some models emit the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = None
    if not isinstance(args, dict) or not isinstance(args.get("code"), str):
        return ToolCall(error="the arguments must be an object with a string \"code\"", raw=raw)
    if not args["code"].strip():
        return ToolCall(error="the \"code\" argument is empty", raw=raw)
    return ToolCall(code=args["code"], raw=raw)


def split_reasoning(text: str, in_think: bool = False) -> tuple[str, str]:
    """(reasoning part, answer part) of an assistant turn: the answer part follows the last
    `</think>`, as Qwen3 templates split it. `in_think`: the text starts inside a reasoning
    block the generation prompt opened. A block that never closes is all reasoning."""
    head, sep, tail = text.rpartition("</think>")
    if sep:
        return head + sep, tail
    if in_think or "<think>" in text:
        return text, ""
    return "", text


def parse_tool_calls(text: str, in_think: bool = False) -> list[ToolCall]:
    """Every `<tool_call>...</tool_call>` after an assistant turn's reasoning, parsed (an
    unclosed last one is parsed up to the end of the text). Calls mentioned inside the
    reasoning are thoughts, not calls."""
    _, answer = split_reasoning(text, in_think)
    return [_parse_one(m.group(1)) for m in _CALL_RE.finditer(answer)]


def tool_error_message(error: str) -> str:
    """What the model reads back for a malformed call."""
    return (f"Error: {error}. Call the tool as <tool_call>\n{{\"name\": \"{TOOL_NAME}\", "
            "\"arguments\": {\"code\": \"...\"}}\n</tool_call>")


def truncate_middle(text: str, max_chars: int) -> str:
    """`text` cut to about `max_chars`: head and tail kept, a marker in between."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return (f"{text[:head]}\n... [{len(text) - max_chars} characters truncated] ...\n"
            f"{text[len(text) - tail:]}")
