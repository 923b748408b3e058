"""Outcome reward: extract the final boxed answer and check it against the ground truth.

`score` is binary (1.0 / 0.0). Cheap checks run first (exact string, normalised string,
integers such as "070" vs "70", plain fractions); math-verify (sympy) with a timeout handles
LaTeX forms. Truncated trajectories score 0 whatever they contain.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

log = logging.getLogger("aster")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def _balanced(text: str, open_at: int) -> str | None:
    """The content of the brace group opening at text[open_at] == '{', or None if unclosed."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    return None


def _box_content(text: str, start: int, command: str) -> str | None:
    """Content of the box command found at `start`: `\\boxed{...}` or `\\boxed 42`."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():
        return None  # \boxedx is another command
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        return _balanced(text, i)
    if i > start + len(command):  # `\boxed 42`: up to whitespace or `$`
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0) if match else None
    return None


def extract_answer(text: str | None) -> str | None:
    """The content of the last `\\boxed{...}` (balanced braces), `\\boxed X` or `\\fbox{...}`."""
    if not text:
        return None
    # Walk back from the last occurrence of any box command until one parses.
    candidates = []
    for cmd in _BOX_COMMANDS:
        candidates += [(m.start(), cmd) for m in re.finditer(re.escape(cmd), text)]
    for start, cmd in sorted(candidates, reverse=True):
        content = _box_content(text, start, cmd)
        if content is not None:
            return content.strip()
    return None


def normalize(answer: str) -> str:
    """A light string normalisation: spaces, `$`, `\\left`/`\\right`, `\\!`, trailing dot,
    `\\text{...}` wrappers, `^\\circ`, thousands separators in plain numbers."""
    s = answer.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^\\circ", "^{\\circ}"):
        s = s.replace(token, "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def _as_fraction(s: str) -> Fraction | None:
    """A rational number from an integer, decimal, `a/b` or `\\frac{a}{b}`, else None."""
    try:
        if _INT_RE.match(s) or _NUM_RE.match(s):
            return Fraction(s)
        m = _FRAC_RE.match(s)
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
        m = _SLASH_RE.match(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _math_verify_equal(pred: str, gold: str, timeout_s: int) -> bool:
    """math-verify's equivalence; its signal-based timeout works only in the main thread."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return False
    in_main = threading.current_thread() is threading.main_thread()
    limit = timeout_s if in_main else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=limit)
        pred_parsed = parse(f"${pred}$", parsing_timeout=limit)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except Exception as exc:  # noqa: BLE001 - a checker failure is a wrong answer, not a crash
        log.debug("math-verify failed on %r vs %r: %s", pred, gold, exc)
        return False


def answers_match(pred: str, gold: str, timeout_s: int = 5) -> bool:
    """True when the extracted answer `pred` equals `gold` mathematically."""
    if pred == gold:
        return True
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    pf, gf = _as_fraction(p), _as_fraction(g)
    if pf is not None and gf is not None:
        return pf == gf
    if gf is not None and _INT_RE.match(g) and pf is None and p.isalnum():
        return False  # an integer answer against a word: no need for sympy
    return _math_verify_equal(pred, gold, timeout_s)


def score(response: str, ground_truth: str, *, truncated: bool = False,
          timeout_s: int = 5) -> float:
    """1.0 if the last boxed answer in `response` equals `ground_truth`, else 0.0.

    A truncated trajectory (it hit a length or tool-call limit) scores 0.
    """
    if truncated:
        return 0.0
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    gold = str(ground_truth).strip()
    boxed_gold = extract_answer(gold)
    if boxed_gold is not None:
        gold = boxed_gold
    return 1.0 if answers_match(pred, gold, timeout_s) else 0.0
