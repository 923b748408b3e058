"""model.chat_template: the chat template SFT, RL and eval render with, when the checkpoint's
own cannot show the tool (a ChatML template that ignores `tools`, for one). "" keeps the
checkpoint's; a shipped name (`hermes`) or a Jinja file replaces it on the tokenizer, which
the stages then save with their models. See docs/recipe.md, "Chat templates"."""

from __future__ import annotations

from pathlib import Path

# The real Qwen3 chat template (the hybrid-thinking one of Qwen3-0.6B ... Qwen3-32B), verbatim
# (Apache-2.0): the tiny default renders every conversation the way a real Qwen3 checkpoint
# does (tools in the system turn, reasoning split off at `</think>`, an empty think block on
# the last turn only, reasoning before the last user message dropped, tool messages grouped
# in a user turn as <tool_response>). tests/test_tiny_model.py compares it with the real file.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


def shipped() -> dict[str, str]:
    """Shipped templates by name: `hermes` is the Qwen2.5/Qwen3 Hermes-style tool template
    (tools in the system turn inside <tools>, calls in <tool_call>, outputs in
    <tool_response>) the tiny default model uses."""
    return {"hermes": CHAT_TEMPLATE}


SHIPPED_NAMES = ("hermes",)


def check_template_choice(choice: str) -> None:
    """model.chat_template names a shipped template or a readable file (ValueError if not)."""
    if choice and choice not in SHIPPED_NAMES and not Path(choice).is_file():
        raise ValueError(f"model.chat_template={choice!r} is neither a shipped template "
                         f"({', '.join(SHIPPED_NAMES)}) nor a file; give one of them, a Jinja "
                         "file, or leave it empty for the checkpoint's own")


def use_template(tokenizer, choice: str | None):
    """`tokenizer` with model.chat_template applied (unchanged when it is empty)."""
    if not choice:
        return tokenizer
    table = shipped()
    tokenizer.chat_template = table[choice] if choice in table else Path(choice).read_text()
    return tokenizer
