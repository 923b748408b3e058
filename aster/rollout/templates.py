"""model.chat_template: the chat template SFT, RL and eval render with, when the checkpoint's
own cannot show the tool (a ChatML template that ignores `tools`, for one). "" keeps the
checkpoint's; a shipped name (`hermes`) or a Jinja file replaces it on the tokenizer, which
the stages then save with their models. See docs/recipe.md, "Chat templates"."""

from __future__ import annotations

from pathlib import Path


def shipped() -> dict[str, str]:
    """Shipped templates by name: `hermes` is the Qwen2.5/Qwen3 Hermes-style tool template
    (tools in the system turn inside <tools>, calls in <tool_call>, outputs in
    <tool_response>) the tiny default model uses."""
    from aster.tiny_model import CHAT_TEMPLATE

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
