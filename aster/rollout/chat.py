"""The Qwen3 / Hermes tool conversation format: prompts, tool-call parsing, tool turns.

Everything is rendered with the tokenizer's own chat template, so a real Qwen3 tokenizer and
the tiny one behave the same. The tool turn appended after a sampled assistant turn is the
exact text the template would put between that turn's end-of-turn token and the next
assistant turn (found by rendering a probe conversation with and without tool messages).
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
    """The user turn of DESIGN.md: the problem followed by the boxed-answer instruction."""
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


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>...</tool_call>` in an assistant turn, parsed (an unclosed last one
    is parsed up to the end of the text)."""
    return [_parse_one(m.group(1)) for m in _CALL_RE.finditer(text)]


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


class ToolTurnFormat:
    """Renders the tokens that follow a sampled assistant turn ending in an end-of-turn token:
    the tool turn with one `<tool_response>` per output, then the next generation prompt."""

    def __init__(self, tokenizer, tools=None):
        self.tokenizer = tokenizer
        self.tools = tools
        self.eos_text = tokenizer.eos_token
        probe = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
        base = apply_template(tokenizer, probe, tools=tools)
        marker = "\x00TOOL\x00"
        full = apply_template(tokenizer, [*probe, {"role": "tool", "content": marker}],
                              tools=tools, add_generation_prompt=True)
        if not full.startswith(base) or base.rfind(self.eos_text) < 0:
            raise ValueError("the tokenizer's chat template does not render tool messages as "
                             "an append-only turn after the assistant's end-of-turn token")
        # What the template puts after the assistant's end-of-turn token (e.g. "\n").
        self.after_eos = base[base.rfind(self.eos_text) + len(self.eos_text):]
        self._single = full[len(base):]

    def render(self, outputs: list[str]) -> str:
        """The text of the tool turn for `outputs` (one tool message each)."""
        probe = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
        if len(outputs) == 1:
            before, after = self._single.split("\x00TOOL\x00")
            return self.after_eos + before + outputs[0] + after
        base = apply_template(self.tokenizer, probe, tools=self.tools)
        tools_msgs = [{"role": "tool", "content": out} for out in outputs]
        full = apply_template(self.tokenizer, [*probe, *tools_msgs], tools=self.tools,
                              add_generation_prompt=True)
        return self.after_eos + full[len(base):]

    def encode(self, outputs: list[str]) -> list[int]:
        """Token ids of render(outputs) (special tokens in it become single ids)."""
        return self.tokenizer.encode(self.render(outputs), add_special_tokens=False)
