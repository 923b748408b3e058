"""Repair control characters that replaced a LaTeX backslash escape (`\\f` of `\\frac` read as a
form feed, `\\t` of `\\triangle` read as a TAB...) and report what could not be repaired.

A form feed is also what PDF-extracted text (DAPO) leaves of the "fi" ligature ("fi\\x0cve",
"\\x0cfigure", "satis\\x0ces"): there it is restored to text, not to a LaTeX escape."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

# Characters that never belong in a problem statement: always an eaten backslash escape.
_ALWAYS = {"\x07": "\\a", "\x08": "\\b", "\x0b": "\\v"}
# \f commands a form feed may have eaten; other form feeds are a ligature or spacing.
_FF_COMMAND = re.compile("\x0c(rac|orall|lat|rown|box|rak|ootnote)(?![A-Za-z])")
_FF_NEXT_TO_FI = re.compile("(?<=fi)\x0c|\x0c(?=fi)")
_FF_FOR_FI = re.compile("(?<=[A-Za-z])\x0c(?=[a-z])|(?<![A-Za-z])\x0c(?=[a-z]{2})")
# TAB / CR are whitespace too (Asymptote code indents with TABs): repaired only before the
# LaTeX commands that start with `\t` / `\r`.
_BEFORE_COMMANDS = {
    "\t": ("\\t", ("triangle", "times", "theta", "tan", "tanh", "text", "textbf", "textit",
                    "tfrac", "tbinom", "tilde", "to", "top", "tau", "therefore")),
    "\r": ("\\r", ("right", "rangle", "rho", "rm", "rfloor", "rceil", "rightarrow")),
}
# A newline is legit text; repaired only before the LaTeX commands that start with `\n`.
# (only distinctive ones: "\n" + "ot" could be a line starting with "ot...")
_NEWLINE_COMMANDS = ("neq", "nabla", "notin", "nmid", "newline")
_NEWLINE_RE = re.compile("\n(" + "|".join(c[1:] for c in _NEWLINE_COMMANDS) + r")(?![A-Za-z])")
_OTHER_CONTROL = re.compile(r"[\x00-\x06\x0c\x0e-\x1f\x7f]")


@dataclass
class SanitizeReport:
    """Counts of repairs by kind and of control characters left in place (reported only)."""

    repaired: Counter = field(default_factory=Counter)
    unrepaired: Counter = field(default_factory=Counter)
    rows_touched: int = 0

    def merge(self, other: SanitizeReport) -> None:
        self.repaired.update(other.repaired)
        self.unrepaired.update(other.unrepaired)
        self.rows_touched += other.rows_touched

    def summary(self) -> str:
        parts = [f"{k} x{n}" for k, n in sorted(self.repaired.items())]
        text = f"repaired control characters in {self.rows_touched} rows ({', '.join(parts)})"
        if self.unrepaired:
            bad = ", ".join(f"{k} x{n}" for k, n in sorted(self.unrepaired.items()))
            text += f"; left unrepaired: {bad}"
        return text


def _repair_ff(text: str, counts: Counter) -> str:
    # A form feed right before a backslash (`\x0c\frac`) is a stray doubled escape: drop it.
    n_stray = text.count("\x0c\\")
    if n_stray:
        counts["form feed before \\ (dropped)"] += n_stray
        text = text.replace("\x0c\\", "\\")
    text, n = _FF_COMMAND.subn(lambda m: "\\f" + m.group(1), text)
    if n:
        counts["'\\x0c'->\\f"] += n
    text, n = _FF_NEXT_TO_FI.subn("", text)  # "fi\x0cve": the ligature's marker, dropped
    text, m = _FF_FOR_FI.subn("fi", text)  # "satis\x0ces": the ligature's letters lost
    if n + m:
        counts["form feed of a 'fi' ligature"] += n + m
    return text


def sanitize_text(text: str) -> tuple[str, SanitizeReport]:
    """Return `text` with eaten LaTeX escapes restored, and what was done."""
    report = SanitizeReport()
    counts = report.repaired
    text = _repair_ff(text, counts)
    for char, escape in _ALWAYS.items():
        if char in text:
            counts[f"{char!r}->{escape}"] += text.count(char)
            text = text.replace(char, escape)
    for char, (escape, commands) in _BEFORE_COMMANDS.items():
        pattern = re.compile(re.escape(char) + "(" + "|".join(c[1:] for c in commands)
                             + r")(?![A-Za-z])")
        text, n = pattern.subn(lambda m, e=escape: e + m.group(1), text)
        if n:
            counts[f"{char!r}->{escape}"] += n
    text, n = _NEWLINE_RE.subn(lambda m: "\\n" + m.group(1), text)
    if n:
        counts["'\\n'->\\n"] += n
    for m in _OTHER_CONTROL.finditer(text):
        report.unrepaired[repr(m.group(0))] += 1
    if counts or report.unrepaired:
        report.rows_touched = 1
    return text, report
