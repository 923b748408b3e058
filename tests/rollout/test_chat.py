"""Conversation format: prompts, tool-call parsing, tool turns rendered by the template."""

from __future__ import annotations

import json

from aster.rollout.chat import (
    ANSWER_INSTRUCTION,
    CODE_INTERPRETER_TOOL,
    apply_template,
    encode_prompt,
    parse_tool_calls,
    prompt_messages,
    tool_error_message,
    truncate_middle,
)
from aster.rollout.chat_format import ChatFormat


def _call(code, name="code_interpreter"):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": {"code": code}}) + \
        "\n</tool_call>"


def test_prompt_is_the_templated_user_turn(tokenizer):
    messages = prompt_messages("What is 2+3?")
    assert messages[-1]["content"].endswith(ANSWER_INSTRUCTION)
    ids = encode_prompt(tokenizer, messages)
    text = tokenizer.decode(ids)
    assert text == apply_template(tokenizer, messages, add_generation_prompt=True)
    assert json.dumps(CODE_INTERPRETER_TOOL) in text
    assert text.endswith("<|im_start|>assistant\n")


def test_parse_valid_calls():
    text = "<think>\nplan\n</think>\n\n" + _call("x = 1\nprint(x)") + "\n" + _call("print(2)")
    calls = parse_tool_calls(text)
    assert [c.code for c in calls] == ["x = 1\nprint(x)", "print(2)"]
    assert all(c.error is None for c in calls)
    # arguments given as a JSON string are accepted too
    raw = '<tool_call>\n{"name": "code_interpreter", "arguments": "{\\"code\\": \\"print(3)\\"}"}' \
          '\n</tool_call>'
    assert parse_tool_calls(raw)[0].code == "print(3)"


def test_parse_errors_are_reported_not_dropped():
    cases = {
        "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\": }\n</tool_call>":
            "not valid JSON",
        _call("print(1)", name="browser"): "unknown tool 'browser'",
        "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {}}\n</tool_call>":
            "string \"code\"",
        _call("   "): "empty",
        "<tool_call>\n[1, 2]\n</tool_call>": "JSON object",
        "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\"": "not valid JSON",
    }
    for text, expected in cases.items():
        (call,) = parse_tool_calls(text)
        assert call.error is not None and expected in call.error, (text, call.error)
        message = tool_error_message(call.error)
        assert message.startswith("Error: ") and "<tool_call>" in message
    assert parse_tool_calls("no calls, just \\boxed{3}") == []


def test_tool_turn_matches_the_template(tokenizer):
    fmt = ChatFormat(tokenizer)
    turn = {"role": "assistant", "content": "<think>\nplan\n</think>",
            "tool_calls": [{"type": "function", "function": {
                "name": "code_interpreter", "arguments": {"code": "print(5)"}}}]}
    base = [*prompt_messages("q"), turn]
    for outputs in (["5"], ["1\n2", "Traceback: boom"]):
        full = apply_template(tokenizer, [*base, *({"role": "tool", "content": o}
                                                   for o in outputs)],
                              add_generation_prompt=True)
        head = apply_template(tokenizer, base)
        # sampled text ends at the end-of-turn token; the tool turn supplies the rest
        sampled_end = head[:head.rfind(tokenizer.eos_token) + len(tokenizer.eos_token)]
        assert sampled_end + fmt.tool_text(outputs) == full
        assert fmt.tool_text(outputs).startswith("\n<|im_start|>user\n<tool_response>\n")
        assert fmt.tool_text(outputs).endswith(
            "</tool_response><|im_end|>\n<|im_start|>assistant\n")
        assert tokenizer.decode(fmt.tool_ids(outputs)) == fmt.tool_text(outputs)


def test_truncate_middle_keeps_head_and_tail():
    text = "A" * 100 + "B" * 100
    out = truncate_middle(text, 50)
    assert out.startswith("A" * 25) and out.endswith("B" * 25)
    assert "150 characters truncated" in out
    assert truncate_middle("short", 50) == "short"
