"""Interaction density of SFT trajectories (`aster data stats`) and curation (`aster data curate`).

Per trajectory: tool calls, tool errors, assistant turns, tokens, whether the final answer is
correct (re-scored with aster.reward when the row has an answer), and how the tool was used:
``causal`` (a later call uses a variable defined, or a value printed, by an earlier one),
``independent`` (several calls, none building on another), ``post-hoc`` (a single call) or
``none``.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from aster.reward import score
from aster.train.sft_encoding import encode_segments

_ERROR_LINE = re.compile(r"(Traceback \(most recent call last\)|^\w*(Error|Exception)\b.*$)",
                         re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
USE_KINDS = ("causal", "independent", "post-hoc", "none")


def calls_and_outputs(example: dict) -> list[tuple[str, str]]:
    """(code, tool output) per call, in order; output '' when the call got no response."""
    pairs: list[list[str]] = []
    pending: list[list[str]] = []
    for msg in example["messages"]:
        if msg["role"] == "assistant":
            pending = []
            for call in msg.get("tool_calls") or []:
                args = call["function"]["arguments"]
                code = args.get("code", "") if isinstance(args, dict) else str(args)
                pending.append([str(code), ""])
                pairs.append(pending[-1])
        elif msg["role"] == "tool" and pending:
            pending.pop(0)[1] = msg["content"]
    return [(code, out) for code, out in pairs]


def count_tool_calls(example: dict) -> int:
    """The number of tool calls in a trajectory."""
    return sum(len(m.get("tool_calls") or []) for m in example["messages"])


def is_tool_error(output: str) -> bool:
    """True when a tool output shows a traceback, an exception line or a timeout."""
    return bool(_ERROR_LINE.search(output))


def _names(code: str) -> tuple[set[str], set[str]]:
    """(names the cell defines, names it reads); empty sets when it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set(), set()
    defined, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return defined, used


def tool_use_kind(example: dict) -> str:
    """causal / independent / post-hoc / none (see the module docstring)."""
    pairs = calls_and_outputs(example)
    if not pairs:
        return "none"
    if len(pairs) == 1:
        return "post-hoc"
    defined_before: set[str] = set()
    printed_before: set[str] = set()
    for code, output in pairs:
        defined, used = _names(code)
        numbers = {n for n in _NUMBER.findall(code) if len(n.lstrip("-")) >= 3}
        if (used - defined) & defined_before or numbers & printed_before:
            return "causal"
        defined_before |= defined
        printed_before |= {n for n in _NUMBER.findall(output) if len(n.lstrip("-")) >= 3}
    return "independent"


def final_text(example: dict) -> str:
    """The content of the last assistant turn."""
    for msg in reversed(example["messages"]):
        if msg["role"] == "assistant":
            return msg["content"]
    return ""


def problem_text(example: dict) -> str:
    """The first user turn (dedup key)."""
    return next((m["content"] for m in example["messages"] if m["role"] == "user"), "")


def is_correct(example: dict) -> bool | None:
    """Re-scored with aster.reward; None when the row has no answer."""
    if example.get("answer") in (None, ""):
        return None
    return score(final_text(example), str(example["answer"])) > 0


def count_tokens(example: dict, tokenizer=None) -> int:
    """Tokens SFT trains the conversation as (aster.train.sft_encoding, the tokenizer's chat
    template), or ~chars/4 without a tokenizer."""
    if tokenizer is not None:
        segments = encode_segments(tokenizer, example["messages"], example.get("tools"))
        return sum(len(s.ids) for s in segments)
    chars = sum(len(m["content"]) + sum(len(str(c["function"]["arguments"]))
                                        for c in m.get("tool_calls") or [])
                for m in example["messages"])
    return max(1, chars // 4)


@dataclass
class TrajectoryStats:
    tool_calls: int
    tool_errors: int
    turns: int
    tokens: int
    correct: bool | None
    use: str


def trajectory_stats(example: dict, tokenizer=None, rescore: bool = True) -> TrajectoryStats:
    """The interaction-density record of one trajectory."""
    pairs = calls_and_outputs(example)
    return TrajectoryStats(
        tool_calls=len(pairs), tool_errors=sum(is_tool_error(o) for _, o in pairs),
        turns=sum(m["role"] == "assistant" for m in example["messages"]),
        tokens=count_tokens(example, tokenizer),
        correct=is_correct(example) if rescore else None, use=tool_use_kind(example))


@dataclass
class CurateResult:
    kept: list[int]  # indices into the input, in output order
    removed: dict[str, int]  # filter name -> rows it removed


def curate(examples: list[dict], stats: list[TrajectoryStats], *, min_tool_calls: int = 9,
           require_correct: bool = True, max_tokens: int = 0, dedup: bool = False,
           size: int = 0, seed: int = 0) -> CurateResult:
    """Filter in order (tool calls, correctness, tokens, dedup), then sample `size` rows."""
    removed = {}
    keep = list(range(len(examples)))

    def apply(name: str, pred) -> None:
        nonlocal keep
        before = len(keep)
        keep = [i for i in keep if pred(i)]
        removed[name] = before - len(keep)

    apply(f"tool_calls < {min_tool_calls}", lambda i: stats[i].tool_calls >= min_tool_calls)
    if require_correct:
        apply("incorrect answer", lambda i: stats[i].correct is not False)
    if max_tokens:
        apply(f"tokens > {max_tokens}", lambda i: stats[i].tokens <= max_tokens)
    if dedup:
        seen: set[str] = set()

        def first_of_problem(i: int) -> bool:
            key = " ".join(problem_text(examples[i]).split())
            if key in seen:
                return False
            seen.add(key)
            return True

        apply("duplicate problem", first_of_problem)
    if size and len(keep) > size:
        before = len(keep)
        keep = sorted(random.Random(seed).sample(keep, size))
        removed[f"sampled to --size {size}"] = before - len(keep)
    return CurateResult(kept=keep, removed=removed)
