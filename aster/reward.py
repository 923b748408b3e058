"""Outcome reward: extract the final boxed answer and check it against the ground truth.

`score` is binary (1.0 / 0.0) and gives the verdict math-verify would give
(`verify(parse("\\boxed{gold}"), parse(response))`, the call verl's math_verify reward makes),
with the deliberate differences listed in tests/test_reward.py. Cheap checks run first and
decide plain numbers without sympy: exact and normalised strings (units, `\\text{...}` words,
degrees, `$`, thousands separators), integers ("070" vs "70"), decimals, fractions. Everything
else goes to math-verify with its timeouts: in the main thread they are SIGALRM-based; from any
other thread the check runs in a helper process whose main thread has them, so a pathological
answer can never hang a caller. Truncated trajectories score 0 whatever they contain.
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction

log = logging.getLogger("aster")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_FRAC_DIGITS_RE = re.compile(r"^([+-]?)\\frac(\d)(\d)$")  # `\frac12`
_SLASH_RE = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")
# A unit or word after the value in a text command (`3\text{ cm}`, `70 \text{ ways}`,
# `12\,\mathrm{m}^2`): dropped, as math-verify's own normalisation drops it.
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mathrm|mbox)\s*"
_TRAILING_UNIT_RE = re.compile(r"(?<=\S)\s*" + _TEXT_CMD + r"\{[^{}\d]*\}(\^\{?\d\}?)?\s*$")
_TEXT_RE = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_SPACES_RE = re.compile(r"\\[,;: ]|~|\\quad|\\qquad")
_DEGREES = ("^{\\circ}", "^\\circ", "°", "\\degree")
_DROP = ("\\left", "\\right", "\\!", "\\$", "$", "\\displaystyle")
_GROUPED_RE = re.compile(r"[+-]?\d{1,3}([ ,])\d{3}(\1\d{3})*(\.\d+)?")
# a chain of integer powers (`10^{10^{10}}`): evaluated below to see that it stays small
_POWER_CHAIN_RE = re.compile(r"\d+(?:\s*\^\s*\{?\s*\d+)+")
_MAX_DIGITS = 10**6
_MAX_CHARS = 1000


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
    """A light string normalisation for the cheap checks: a trailing unit or word in a text
    command, `\\text{}` wrappers, degrees, `$`, `\\left`/`\\right`, `dfrac`, a trailing dot,
    thousands separators in plain numbers (`1,000`, `1{,}000`, `1\\,000`; a comma followed by a
    space separates list items: `1, 100` stays a list)."""
    s = answer.strip()
    for _ in range(2):  # `3\text{ cm}^2`, `45^\circ\text{C}`
        s = _TRAILING_UNIT_RE.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    for token in (*_DROP, *_DEGREES):
        s = s.replace(token, "")
    s = s.replace("{,}", ",").replace("dfrac", "frac").replace("tfrac", "frac")
    s = _SPACES_RE.sub(" ", s)
    s = re.sub(r"\s*,\s*", lambda m: "," if m.group(0) == "," else ", ", s.strip())
    s = re.sub(r"(?<=\d)\s+(?=\d)", " ", s)  # `2 3` is not 23
    s = re.sub(r"(?<![\d,])\s+|\s+(?!\d)", "", s).rstrip(".")
    if _GROUPED_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return s


def _as_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, written as a decimal) of an integer, decimal, `a/b` or `\\frac{a}{b}`."""
    try:
        if _NUMBER_RE.match(s):
            return Fraction(s), "." in s
        m = _FRAC_RE.match(s) or _FRAC_DIGITS_RE.match(s)
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return (-value if m.group(1) == "-" else value), False
        m = _SLASH_RE.match(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2))), False
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _numbers_equal(p: tuple[Fraction, bool], g: tuple[Fraction, bool]) -> bool:
    if p[1] or g[1]:  # a decimal on either side: math-verify compares to 6 places
        return round(p[0], 6) == round(g[0], 6)
    return p[0] == g[0]


def _power_chain_too_big(numbers: list[int]) -> bool:
    """True when the integer tower numbers[0]^(numbers[1]^(...)) has over _MAX_DIGITS digits
    (or an exponent that does), evaluated from the top without building anything large."""
    value = numbers[-1]
    for base in reversed(numbers[:-1]):
        if base <= 1:
            value = base if value > 0 else 1
            continue
        digits = value * math.log10(base)
        if digits > _MAX_DIGITS:
            return True
        value = base ** value if digits <= 8 else 10**8  # past 10^8 only the size matters
    return False


def _too_costly(s: str) -> bool:
    """True for an answer whose value sympy could not build in bounded time or memory (a power
    tower with over a million digits, a factorial of a 6-digit number, a very long text):
    SIGALRM cannot interrupt one long big-integer operation."""
    if len(s) > _MAX_CHARS or re.search(r"\d{6,}\s*!", s):
        return True
    return any(_power_chain_too_big([int(n) for n in re.findall(r"\d+", chain.group(0))])
               for chain in _POWER_CHAIN_RE.finditer(s))


def _math_verify_equal(pred: str, gold: str, timeout_s: int) -> bool:
    """math-verify's verdict, called the way verl's reward calls it (the gold boxed). Its
    timeouts are SIGALRM-based: call this in a main thread only."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_s)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout_s)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))
    except Exception as exc:  # noqa: BLE001 - a checker failure is a wrong answer, not a crash
        log.debug("math-verify failed on %r vs %r: %s", pred, gold, exc)
        return False


class _HelperVerifier:
    """math-verify in a helper process (`python -m aster.reward`, JSON lines on its stdin and
    stdout), for callers off the main thread: the helper runs it in its own main thread, where
    the timeouts work. One request at a time; a helper that gives no verdict in time is killed
    and the next call starts another. A plain subprocess, not multiprocessing: spawn would
    re-import the caller's __main__."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "aster.reward"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)

    def _ask(self, request: str, wait_s: float) -> bool | None:
        self._proc.stdin.write(request + "\n")
        self._proc.stdin.flush()
        ready, _, _ = select.select([self._proc.stdout], [], [], wait_s)
        line = self._proc.stdout.readline() if ready else ""
        return bool(json.loads(line)) if line else None

    def equal(self, pred: str, gold: str, timeout_s: int) -> bool:
        # math-verify's own limits (2 parses, up to 4 comparisons), then the helper's start-up
        wait_s = 6 * timeout_s + 60
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            try:
                verdict = self._ask(json.dumps([pred, gold, timeout_s]), wait_s)
            except (OSError, ValueError):
                verdict = None
            if verdict is not None:
                return verdict
            log.warning("reward: math-verify gave no verdict on %.80r vs %.80r within %ds; "
                        "scored 0", pred, gold, wait_s)
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            return False


_helper = _HelperVerifier()


def answers_match(pred: str, gold: str, timeout_s: int = 5) -> bool:
    """True when the extracted answer `pred` equals `gold` mathematically."""
    if pred == gold:
        return True
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return _numbers_equal(pn, gn)
    if gn is not None and re.fullmatch(r"[A-Za-z]+", p):
        return False  # a number against a word: no need for sympy
    if _too_costly(pred) or _too_costly(gold):
        return False
    if threading.current_thread() is threading.main_thread():
        return _math_verify_equal(pred, gold, timeout_s)
    return _helper.equal(pred, gold, timeout_s)


REWARD_MATCHES = ("math_verify", "strict_box")


def strict_box_answer(response: str) -> str | None:
    """The public reproduction's strict check (verl's DAPO reward with strict_box_verify=True,
    Rainyrou/ASTER reward_score.py): the last `\\boxed{` in the response's last 100
    characters, up to its balanced closing brace, not normalised and not stripped."""
    tail = response[-100:]
    start = tail.rfind("\\boxed{")
    depth = 0
    for i in range(max(start, 0), len(tail) if start >= 0 else 0):
        depth += {"{": 1, "}": -1}.get(tail[i], 0)
        if tail[i] == "}" and depth == 0:
            return tail[start + len("\\boxed{"):i]
    return None


def score(response: str, ground_truth: str, *, truncated: bool = False,
          timeout_s: int = 5, match: str = "math_verify") -> float:
    """1.0 if the last boxed answer in `response` equals `ground_truth`, else 0.0.

    A truncated trajectory (it hit a length or tool-call limit) scores 0. match: math_verify
    (aster's: mathematically equal, as math-verify decides) or strict_box (the reproduction's:
    the boxed text in the last 100 characters equals the ground truth string exactly).
    """
    if truncated:
        return 0.0
    if match == "strict_box":
        return 1.0 if strict_box_answer(response or "") == str(ground_truth) else 0.0
    pred = extract_answer(response)
    if pred is None:
        return 0.0
    gold = str(ground_truth).strip()
    boxed_gold = extract_answer(gold)
    if boxed_gold is not None:
        gold = boxed_gold
    return 1.0 if answers_match(pred, gold, timeout_s) else 0.0


def _serve() -> None:
    """The helper process of _HelperVerifier: one verdict line per request line."""
    for line in sys.stdin:
        pred, gold, timeout_s = json.loads(line)
        print(json.dumps(_math_verify_equal(pred, gold, timeout_s)), flush=True)


if __name__ == "__main__":
    _serve()
