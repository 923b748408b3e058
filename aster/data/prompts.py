"""RL prompts and eval sets: the internal form ``{"problem", "answer", "data_source"}``.

Read from the verl / DAPO layout (``prompt`` chat list, ``reward_model.ground_truth``,
``data_source``; parquet or jsonl) and from plain jsonl ``{problem, answer}``; written back in
the layout read. ``problem`` is held without the user-turn suffix; `user_turn` adds it exactly
once. Text is sanitised (control characters that ate a LaTeX escape are repaired; the rest are
reported).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from aster.data.io import Skipped, file_kind, is_bad_line, read_rows, require_columns, write_rows
from aster.data.sanitize import SanitizeReport, sanitize_text
from aster.rollout.chat import ANSWER_INSTRUCTION as SUFFIX
from aster.rollout.chat import user_message

logger = logging.getLogger("aster")

PROMPT_LAYOUTS = ("verl", "plain")
_PROBLEM_KEYS = ("problem", "question")
_ANSWER_KEYS = ("answer", "ground_truth", "final_answer")


@dataclass
class LoadedPrompts:
    """Prompts in the internal form, their layout, what was skipped and what was repaired."""

    prompts: list[dict]
    layout: str
    file_kind: str
    skipped: Skipped = field(default_factory=Skipped)
    sanitized: SanitizeReport = field(default_factory=SanitizeReport)


def strip_suffix(text: str) -> str:
    """The problem without the user-turn suffix (and the whitespace around it)."""
    text = text.strip()
    while text.endswith(SUFFIX):
        text = text[: -len(SUFFIX)].rstrip()
    return text


def user_turn(problem: str) -> str:
    """The user message for `problem`: the problem and the suffix, the suffix exactly once
    (rendered by aster.rollout.chat.user_message, so SFT, RL and eval prompts agree)."""
    return user_message(strip_suffix(problem))["content"]


def prompt_messages(problem: str, system: str | None = None) -> list[dict]:
    """The chat messages a rollout starts from."""
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user_turn(problem)}]


def _verl_problem(row: dict) -> str:
    chat = row.get("prompt")
    if isinstance(chat, str):
        return chat
    if not isinstance(chat, list) or not chat:
        raise ValueError("`prompt` is not a chat list")
    users = [m for m in chat if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise ValueError("`prompt` has no user message")
    return users[-1]["content"]


def _first(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if row.get(key) not in (None, ""):
            return row[key]
    return None


def _convert(row: dict, layout: str) -> dict:
    if layout == "verl":
        problem = _verl_problem(row)
        reward = row.get("reward_model")
        answer = reward.get("ground_truth") if isinstance(reward, dict) else None
        answer = answer if answer not in (None, "") else _first(row, _ANSWER_KEYS)
    else:
        problem, answer = _first(row, _PROBLEM_KEYS), _first(row, _ANSWER_KEYS)
    if not isinstance(problem, str) or not strip_suffix(problem):
        raise ValueError("no problem text")
    if answer is None or str(answer).strip() == "":
        raise ValueError("no answer")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "reward_model", "data_source",
                                                        *_PROBLEM_KEYS, *_ANSWER_KEYS)}
    out = {"problem": strip_suffix(problem), "answer": str(answer).strip(),
           "data_source": str(row.get("data_source") or "")}
    if extra:
        out["extra"] = extra
    return out


def detect_prompt_layout(rows: list) -> str:
    for row in rows:
        if isinstance(row, dict):
            return "verl" if "prompt" in row and "reward_model" in row else "plain"
    return "plain"


def load_prompts(path: str | os.PathLike, max_rows: int = 0) -> LoadedPrompts:
    """Load RL prompts or an eval set; malformed rows skipped and reported, text sanitised."""
    rows, kind = read_rows(path)
    require_columns(rows, path, {"prompt", *_PROBLEM_KEYS}, "prompts")
    layout = detect_prompt_layout(rows)
    loaded = LoadedPrompts(prompts=[], layout=layout, file_kind=kind)
    for index, row in enumerate(rows):
        try:
            if is_bad_line(row) or not isinstance(row, dict):
                raise ValueError(is_bad_line(row) or "row is not an object")
            prompt = _convert(row, layout)
        except ValueError as exc:
            loaded.skipped.add(index, str(exc))
            continue
        prompt["problem"], report = sanitize_text(prompt["problem"])
        loaded.sanitized.merge(report)
        loaded.prompts.append(prompt)
        if max_rows and len(loaded.prompts) >= max_rows:
            break
    loaded.skipped.report(str(path), len(loaded.prompts))
    if loaded.sanitized.rows_touched:
        logger.warning("%s: %s", path, loaded.sanitized.summary())
    return loaded


def prompt_row(prompt: dict, layout: str) -> dict:
    """One internal prompt as a row of `layout`."""
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {', '.join(PROMPT_LAYOUTS)}")
    extra = prompt.get("extra") or {}
    if layout == "plain":
        return {"problem": prompt["problem"], "answer": prompt["answer"],
                **({"data_source": prompt["data_source"]} if prompt.get("data_source") else {}),
                **extra}
    return {"data_source": prompt.get("data_source") or "",
            "prompt": [{"role": "user", "content": user_turn(prompt["problem"])}],
            "reward_model": {"ground_truth": prompt["answer"], "style": "rule"}, **extra}


def write_prompts(prompts: list[dict], path: str | os.PathLike, layout: str = "plain") -> None:
    """Write prompts in `layout` (parquet or jsonl from the file name), atomically."""
    file_kind(path)
    write_rows([prompt_row(p, layout) for p in prompts], path)
