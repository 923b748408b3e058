"""One rendering truth for rollouts and SFT: the text a model samples and the text it is fed,
each derived from the tokenizer's own chat template by probing it with realistic turns.

A tool conversation after one user message is, at generation time, append-only:

    prompt (template, generation prompt)
    assistant turn 1 as sampled, ending in the end-of-turn token        <- trained (mask 1)
    tool turn 1: what the template puts after that token: the tool       <- fed (mask 0)
        messages and the next generation prompt
    assistant turn 2 as sampled ...

whatever the template would do to earlier turns when it re-renders the whole conversation
(real Qwen3 templates drop an empty ``<think>`` block from every turn but the last, and drop the
reasoning of turns before the last user message). `ChatFormat` gives each piece:

- ``prompt_ids(messages)``: the conversation so far with the generation prompt;
- ``assistant_text(message)``: an assistant message as the model samples it, i.e. rendered as
  the last turn after a user turn, minus the generation prompt, through its end-of-turn token
  (so Qwen3 templates give ``<think>\\n\\n</think>\\n\\n`` to a turn without reasoning, and a
  Thinking-2507 turn starts inside the ``<think>`` its generation prompt opened);
- ``tool_text(outputs)``: the tool turn for one or more outputs, then the next generation prompt.

The agent loop appends ``tool_ids`` after each sampled turn; the SFT encoder
(aster.train.sft_encoding) concatenates the same pieces for a conversation read from a file, so
a trajectory converted to messages encodes to the ids the model produced and saw.
"""

from __future__ import annotations

import json
import re

from aster.errors import AsterUserError
from aster.rollout.chat import CODE_INTERPRETER_TOOL, TOOL_NAME, apply_template, user_message


class ChatTemplateError(AsterUserError):
    """The tokenizer's chat template cannot express append-only tool turns."""


class TurnRenderError(ValueError):
    """One assistant message the template does not render after its generation prompt."""


_PROBE_USER = user_message("What is 6 * 7 + 5?")
_PROBE_TURN = {"role": "assistant", "content": "<think>\nLet me compute 6 * 7 first.\n</think>",
               "tool_calls": [{"type": "function", "function": {
                   "name": TOOL_NAME, "arguments": {"code": "x = 6 * 7\nprint(x)"}}}]}
_MARK = "\x00OUT{}\x00"
_MARK_RE = re.compile("\x00OUT\\d+\x00")


class ChatFormat:
    """The pieces of an append-only tool conversation under `tokenizer`'s chat template (and
    `tools`, default the code interpreter). Raises ChatTemplateError (one line, exit 2) when the
    template cannot render tool turns after an assistant turn's end-of-turn token."""

    def __init__(self, tokenizer, tools=None):
        self.tokenizer = tokenizer
        self.tools = tools or [CODE_INTERPRETER_TOOL]
        self.eos_text = tokenizer.eos_token
        if not self.eos_text:
            raise ChatTemplateError("the tokenizer has no eos token, so an assistant turn has no "
                                    "end; use a chat model's tokenizer")
        self._head = self._render([_PROBE_USER], generation_prompt=True, what="a user turn")
        plain = self._render([_PROBE_USER], what="a user turn")
        self.generation_prompt = self._head[len(plain):] if self._head.startswith(plain) else ""
        # Thinking templates (Qwen3-Thinking-2507) open the reasoning in the generation prompt:
        # the sampled text starts inside it and has only the closing </think>.
        self.opens_think = self.generation_prompt.rstrip().endswith("<think>")
        self.assistant_text(_PROBE_TURN, probe=True)
        self._tool_parts: dict[int, list[str]] = {}
        self._tool_parts[1] = self._probe_tool_turn(1)
        # last: a template that cannot hold tool turns at all says that first
        self._check_tools_shown()

    def _check_tools_shown(self) -> None:
        """The rendered prompt names every tool: a template that drops `tools` (plain ChatML)
        would leave the model calling a tool it was never shown."""
        names = [t.get("function", t).get("name", "") for t in self.tools]
        missing = [n for n in names if n and n not in self._head]
        if missing:
            raise ChatTemplateError(
                f"the tokenizer's chat template does not show the tool schema (no "
                f"{missing[0]!r} in the prompt it renders), so the model would never see the "
                "tool; name a template that does: model.chat_template=hermes (shipped, "
                "Hermes-style) or model.chat_template=FILE.jinja")

    # ---- rendering ----------------------------------------------------------------------------
    def _render(self, messages, generation_prompt: bool = False, what: str = "") -> str:
        try:
            return apply_template(self.tokenizer, messages, tools=self.tools,
                                  add_generation_prompt=generation_prompt)
        except Exception as exc:  # noqa: BLE001 - jinja raises anything; reported in one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ChatTemplateError(f"the tokenizer's chat template cannot render {what} "
                                    f"({type(exc).__name__}: {first}); aster needs a template "
                                    "with Hermes-style tool calls and tool messages (Qwen2.5, "
                                    "Qwen3)") from None

    def prompt_text(self, messages: list[dict]) -> str:
        """The conversation so far, rendered with the generation prompt."""
        return apply_template(self.tokenizer, messages, tools=self.tools,
                              add_generation_prompt=True)

    def assistant_text(self, message: dict, probe: bool = False) -> str:
        """`message` as the model samples it after the generation prompt, through its
        end-of-turn token. TurnRenderError when the template renders it otherwise."""
        if probe:
            full = self._render([_PROBE_USER, message],
                                what="an assistant turn with reasoning and a tool call")
        else:
            try:
                full = apply_template(self.tokenizer, [_PROBE_USER, message], tools=self.tools)
            except Exception as exc:  # noqa: BLE001 - jinja raises anything for a bad message
                raise TurnRenderError(f"the chat template cannot render an assistant turn "
                                      f"({type(exc).__name__}: {exc})") from None
        if not full.startswith(self._head):
            why = ("an assistant turn does not start with the template's generation prompt "
                   f"{self.generation_prompt!r}")
            if probe:
                raise ChatTemplateError(f"the tokenizer's chat template is not append-only: {why}")
            raise TurnRenderError(why)
        end = full.find(self.eos_text, len(self._head))
        if end < 0:
            why = f"the chat template ends an assistant turn without the eos token {self.eos_text!r}"
            if probe:
                raise ChatTemplateError(f"{why}; set the tokenizer's eos_token to the template's "
                                        "end-of-turn token")
            raise TurnRenderError(why)
        return full[len(self._head):end + len(self.eos_text)]

    def _probe_tool_turn(self, n: int) -> list[str]:
        """The template's text after an assistant turn's eos for n tool messages, split around
        their contents (markers stand for them)."""
        tools = [{"role": "tool", "content": _MARK.format(i)} for i in range(n)]
        full = self._render([_PROBE_USER, _PROBE_TURN, *tools], generation_prompt=True,
                            what="tool messages after a tool call")
        if not full.startswith(self._head):
            raise ChatTemplateError("the tokenizer's chat template is not append-only: adding a "
                                    "tool turn changes the prompt before the assistant turn")
        end = full.find(self.eos_text, len(self._head))
        if end < 0:
            raise ChatTemplateError(f"the chat template ends an assistant turn without the eos "
                                    f"token {self.eos_text!r}; set the tokenizer's eos_token to "
                                    "the template's end-of-turn token")
        text = full[end + len(self.eos_text):]
        parts = _MARK_RE.split(text)
        found = _MARK_RE.findall(text)
        if found != [_MARK.format(i) for i in range(n)]:
            raise ChatTemplateError("the tokenizer's chat template does not render tool messages "
                                    "after the assistant turn that called the tool (their "
                                    "content is missing or out of order)")
        if not text.endswith(self.generation_prompt):
            raise ChatTemplateError("the tokenizer's chat template does not end a tool turn with "
                                    "its generation prompt")
        return parts

    def tool_text(self, outputs: list[str]) -> str:
        """The text after a sampled turn's eos: one tool message per output, then the next
        generation prompt."""
        n = len(outputs)
        if n not in self._tool_parts:
            self._tool_parts[n] = self._probe_tool_turn(n)
        parts = self._tool_parts[n]
        out = [parts[0]]
        for output, part in zip(outputs, parts[1:]):
            out += [output, part]
        return "".join(out)

    def tool_pattern(self, n: int) -> re.Pattern:
        """A regex matching the tool turn for n outputs, one group per output."""
        if n not in self._tool_parts:
            self._tool_parts[n] = self._probe_tool_turn(n)
        return re.compile("(.*?)".join(re.escape(p) for p in self._tool_parts[n]), re.DOTALL)

    # ---- ids ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.prompt_text(messages))

    def assistant_ids(self, message: dict) -> list[int]:
        return self.encode(self.assistant_text(message))

    def tool_ids(self, outputs: list[str]) -> list[int]:
        return self.encode(self.tool_text(outputs))


_FORMATS: dict = {}
_KEEP = 8  # formats hold their tokenizer: a few recent ones cover any run


def chat_format(tokenizer, tools=None) -> ChatFormat:
    """A ChatFormat per (tokenizer, template, tools), probed once."""
    key = (id(tokenizer), tokenizer.chat_template, json.dumps(tools, sort_keys=True))
    if key not in _FORMATS:
        if len(_FORMATS) >= _KEEP:
            _FORMATS.pop(next(iter(_FORMATS)))
        _FORMATS[key] = ChatFormat(tokenizer, tools)
    return _FORMATS[key]
