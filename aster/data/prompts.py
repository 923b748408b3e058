"""RL prompts and eval sets: the internal form ``{"problem", "answer", "data_source"}``.

Read from the verl / DAPO layout (``prompt`` chat list, ``reward_model.ground_truth``,
``data_source``; parquet or jsonl) and from plain jsonl ``{problem, answer}``; written back in
the layout read. ``problem`` is held without the user-turn suffix; `user_turn` adds it exactly
once. Text is sanitised (control characters that ate a LaTeX escape are repaired; the rest are
reported). Upstream DAPO-Math-17k's own answer instructions are rewritten to the boxed form
(the original kept in ``source_prompt``) and repeated problems dropped (aster.data.dapo).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from aster.data import dapo
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


def _convert(row: dict, layout: str) -> tuple[dict, bool]:
    """(the internal prompt, whether its text was rewritten from DAPO's wrapper)."""
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
    problem, wrapped = dapo.unwrap(problem)  # upstream DAPO's "Answer:" instructions
    if wrapped:
        extra.setdefault("source_prompt", dapo.source_prompt(row, problem_text(row, layout)))
    out = {"problem": strip_suffix(problem), "answer": str(answer).strip(),
           "data_source": str(row.get("data_source") or "")}
    if extra:
        out["extra"] = extra
    return out, wrapped


def problem_text(row: dict, layout: str) -> str:
    """The row's problem as written in the file (before any rewrite)."""
    return _verl_problem(row) if layout == "verl" else _first(row, _PROBLEM_KEYS)


def problem_of(row: dict, layout: str = "verl") -> str:
    """The problem text aster trains on for one row: DAPO's wrapper rewritten, the suffix
    stripped, control characters repaired (raises ValueError for a row load_prompts skips)."""
    prompt, _ = _convert(row, layout)
    return sanitize_text(prompt["problem"])[0]


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
    unique, rewritten = dapo.Deduper(), 0
    for index, row in enumerate(rows):
        try:
            if is_bad_line(row) or not isinstance(row, dict):
                raise ValueError(is_bad_line(row) or "row is not an object")
            prompt, wrapped = _convert(row, layout)
        except ValueError as exc:
            loaded.skipped.add(index, str(exc))
            continue
        prompt["problem"], report = sanitize_text(prompt["problem"])
        if not unique.keep(prompt, index):
            continue
        rewritten += wrapped
        loaded.sanitized.merge(report)
        loaded.prompts.append(prompt)
        if max_rows and len(loaded.prompts) >= max_rows:
            break
    loaded.skipped.report(str(path), len(loaded.prompts))
    _log_rewrites(path, rewritten, unique)
    if loaded.sanitized.rows_touched:
        logger.warning("%s: %s", path, loaded.sanitized.summary())
    return loaded


def _log_rewrites(path, rewritten: int, unique: dapo.Deduper) -> None:
    if rewritten:
        logger.info("%s: %d prompts rewritten from DAPO's \"Answer:\" instructions to the "
                    "boxed form (the upstream text kept in source_prompt)", path, rewritten)
    if unique.dropped:
        (logger.warning if unique.conflicts else logger.info)("%s: %s", path, unique.summary())


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
