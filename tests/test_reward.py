"""Answer extraction and scoring on AIME (integers), HMMT (LaTeX) and DAPO answer formats."""

from __future__ import annotations

import threading

import pytest

from aster.reward import _too_costly, extract_answer, score


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{3}+\\frac{a}{b^{2}}}", "\\sqrt{3}+\\frac{a}{b^{2}}"),
    ("the result: $\\boxed 42$", "42"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and a broken \\boxed{4", "3"),
    ("\\boxed { 12 }", "12"),
    ("no answer here", None),
    ("", None),
    (None, None),
    ("\\boxedx{5}", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("response, gold", [
    # AIME: integers 0..999, sometimes zero-padded
    ("\\boxed{70}", "70"),
    ("\\boxed{070}", "70"),
    ("\\boxed{70}", "070"),
    ("\\boxed{ 204 }", "204"),
    ("\\boxed{1,000}", "1000"),
    # DAPO: integer ground truths, answers in assorted forms
    ("\\boxed{-3}", "-3"),
    ("\\boxed{$12$}", "12"),
    ("\\boxed{12.0}", "12"),
    ("\\boxed{\\text{12}}", "12"),
    # HMMT: LaTeX expressions
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "\\frac{1}{2}"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\dfrac{\\sqrt{3}}{2}"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\pi/4}", "\\frac{\\pi}{4}"),
    ("\\boxed{1+\\sqrt{5}}", "\\sqrt{5}+1"),
    ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{42}", "\\boxed{42}"),
])
def test_score_correct(response, gold):
    assert score(response, gold) == 1.0


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{71}", "70"),
    ("\\boxed{-70}", "70"),
    ("70", "70"),  # no box, no credit
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{3}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{x}", "12"),
    ("\\boxed{}", "12"),
])
def test_score_wrong(response, gold):
    assert score(response, gold) == 0.0


def test_truncated_scores_zero():
    assert score("\\boxed{70}", "70", truncated=True) == 0.0


def test_score_off_main_thread_keeps_a_timeout():
    # Without a timeout sympy spends minutes on this comparison (110 s measured for the
    # exponents 40 / 41). math-verify's SIGALRM timeouts work only in a main thread, so from a
    # worker thread aster runs it in a helper process, whose main thread has them.
    out = []
    thread = threading.Thread(target=lambda: out.append(score(
        "\\boxed{(x+y+z+1)^{60}}", "(1+x+y+z)^{61}", timeout_s=1)), daemon=True)
    thread.start()
    thread.join(300)  # a hang guard, not a timing assertion
    assert not thread.is_alive() and out == [0.0]


@pytest.mark.parametrize("answer", ["9^{9^{9}}", "10^{10^{10}}", "3^{1000000000}",
                                    "2^{2^{2^{2^{2^{2}}}}}", "1000000!", "1" * 1001])
def test_answers_sympy_cannot_build_are_compared_as_strings(answer):
    # one big-integer operation cannot be interrupted by a signal: these never reach sympy
    assert _too_costly(answer)
    assert score(f"\\boxed{{{answer}}}", "7") == 0.0
    assert score(f"\\boxed{{{answer}}}", answer) == 1.0


@pytest.mark.parametrize("answer", ["2^{2^{10}}", "2^{1000000}", "1^{10^{10}}", "99999!",
                                    "2^{2^{2^{2^{2}}}}", "2^{2024}-1"])
def test_large_answers_sympy_can_build_still_reach_it(answer):
    assert not _too_costly(answer)


def test_score_off_main_thread():
    # math-verify's timeout uses SIGALRM; scoring from a worker thread must still work.
    out = []
    thread = threading.Thread(target=lambda: out.append(score("\\boxed{\\sqrt{8}}",
                                                              "2\\sqrt{2}")))
    thread.start()
    thread.join()
    assert out == [1.0]


# ---- aster's verdict next to math-verify's ----------------------------------------------------
# Each row is (response, gold, verdict). The reference is math-verify's own
# `verify(parse("\\boxed{" + gold + "}"), parse(response))`: the gold is boxed the way verl's
# math_verify reward boxes a bare ground truth, because `parse` of a bare "1, 100" reads only
# its last number. Both aster and math-verify must give `verdict`.
AGREE = [
    # units and words after the value
    ("\\boxed{3\\text{ cm}}", "3", 1),
    ("\\boxed{70 \\text{ ways}}", "70", 1),
    ("\\boxed{45^\\circ}", "45", 1),
    ("\\boxed{12\\%}", "12", 1),
    ("\\boxed{45^{\\circ}\\text{C}}", "45", 1),
    ("\\boxed{3\\text{ cm}^2}", "3", 1),
    ("\\boxed{70\\,\\text{cm}}", "70", 1),
    ("\\boxed{10 \\text{ dollars}}", "10", 1),
    ("\\boxed{3\\text{ bananas}}", "3", 1),
    ("\\boxed{3 cm}", "3", 1),
    ("\\boxed{45 degrees}", "45", 1),
    ("\\boxed{\\$10}", "10", 1),
    ("\\boxed{\\frac{1}{2}\\text{ of it}}", "\\frac{1}{2}", 1),
    ("\\boxed{3}", "3\\text{ cm}", 1),
    ("\\boxed{\\text{70 ways}}", "70", 0),  # all of it text
    ("\\boxed{3 bananas}", "3", 0),  # a word outside \text that is no known unit: a product
    ("\\boxed{\\text{Answer: } 70}", "70", 0),
    # commas: thousands separators or list items
    ("\\boxed{1100}", "1, 100", 0),
    ("\\boxed{1, 100}", "1100", 0),
    ("\\boxed{1,100}", "1100", 1),
    ("\\boxed{1100}", "1,100", 1),
    ("\\boxed{1,000}", "1000", 1),
    ("\\boxed{1,000,000}", "1000000", 1),
    ("\\boxed{1{,}000}", "1000", 1),
    ("\\boxed{\\$1,000}", "1000", 1),
    ("\\boxed{1,000.5}", "1000.5", 1),
    ("\\boxed{1,10}", "110", 0),
    ("\\boxed{12,5}", "12.5", 0),
    ("\\boxed{2, 3}", "3, 2", 1),
    ("\\boxed{\\{2,3\\}}", "2,3", 1),
    ("\\boxed{1, 2, 2}", "1, 2", 1),
    ("\\boxed{(1,2)}", "(2,1)", 0),
    # integers (AIME, DAPO)
    ("\\boxed{070}", "70", 1),
    ("\\boxed{70}", "070", 1),
    ("\\boxed{ 204 }", "204", 1),
    ("\\boxed{$12$}", "12", 1),
    ("\\boxed{12.0}", "12", 1),
    ("\\boxed{\\text{12}}", "12", 1),
    ("\\boxed{+5}", "5", 1),
    ("\\boxed{-0}", "0", 1),
    ("\\boxed{71}", "70", 0),
    ("\\boxed{-70}", "70", 0),
    ("\\boxed{x}", "12", 0),
    ("\\boxed{}", "12", 0),
    ("\\boxed{1e3}", "1000", 0),
    # fractions and decimals (math-verify compares a decimal to 6 places)
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1),
    ("\\boxed{1/2}", "\\frac{1}{2}", 1),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{\\frac12}", "0.5", 1),
    ("\\boxed{\\frac{6}{4}}", "\\frac{3}{2}", 1),
    ("\\boxed{-\\frac{1}{2}}", "\\frac{-1}{2}", 1),
    ("\\boxed{0.333333}", "\\frac{1}{3}", 1),
    ("\\boxed{\\frac{1}{3}}", "0.333333", 1),
    ("\\boxed{0.33333}", "\\frac{1}{3}", 0),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0),
    # percentages
    ("\\boxed{12\\%}", "0.12", 1),
    ("\\boxed{0.12}", "12\\%", 1),
    ("\\boxed{50\\%}", "\\frac{1}{2}", 1),
    ("\\boxed{12.5\\%}", "12.5", 0),
    ("\\boxed{12}", "0.12", 0),
    # expressions (HMMT)
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\dfrac{\\sqrt{3}}{2}", 1),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1),
    ("\\boxed{\\pi/4}", "\\frac{\\pi}{4}", 1),
    ("\\boxed{1+\\sqrt{5}}", "\\sqrt{5}+1", 1),
    ("\\boxed{2^{10}}", "1024", 1),
    ("\\boxed{\\sqrt{3}}", "\\frac{\\sqrt{3}}{2}", 0),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", 1),
    ("\\boxed{3.141593}", "\\pi", 1),
    ("\\boxed{3.14}", "\\pi", 0),
    ("\\boxed{2+3i}", "3i+2", 1),
    ("\\boxed{-\\infty}", "\\infty", 0),
    ("\\boxed{2^{2024}-1}", "-1+2^{2024}", 1),
    ("\\boxed{2^{1000000}}", "4^{500000}", 1),
    ("\\boxed{1^{10^{10}}}", "1", 1),
    # equations, intervals, sets
    ("\\boxed{x=5}", "5", 1),
    ("\\boxed{5}", "x=5", 1),
    ("\\boxed{n = 70}", "70", 1),
    ("\\boxed{(1,2]}", "[1,2]", 0),
    ("\\boxed{x \\in (1,2)}", "(1,2)", 1),
    ("\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", 1),
    # choices and words
    ("\\boxed{B}", "A", 0),
    ("\\boxed{\\text{(C)}}", "C", 1),
    ("\\boxed{\\textbf{(B)}}", "B", 1),
    ("\\boxed{\\text{yes}}", "\\text{Yes}", 1),
    ("\\boxed{\\text{no}}", "\\text{Yes}", 0),
    # whole responses
    ("so the answer is \\boxed{42}.", "42", 1),
    ("We get $x = 3$, hence \\boxed{3\\text{ cm}}.", "3", 1),
]

# Where aster gives another verdict on purpose: (response, gold, aster, math-verify, why).
# README.md ("Rewards") says the same in short.
DELIBERATE = [
    ("70", "70", 0, 1,
     "no \\boxed{}: the prompt asks for one; math-verify takes the last number anywhere in the "
     "text, which credits a trajectory that never gave an answer"),
    ("the answer is 70", "70", 0, 1, "no \\boxed{} (as above)"),
    ("\\boxed{2}, \\boxed{3}", "3", 1, 0,
     "the answer is the last box (aster.reward.extract_answer, also what eval records); "
     "math-verify joins nearby boxes into a set"),
    ("\\boxed{2} and \\boxed{3}", "2, 3", 0, 1,
     "the last box only (as above): a list answer goes in one box"),
    ("\\boxed{45°}", "45", 1, 0,
     "the Unicode degree sign reads as ^\\circ does; math-verify leaves it unparsed"),
    ("\\boxed{1\\,000}", "1000", 1, 0,
     "digit groups of three after a thin space are a thousands separator (SI style, siunitx); "
     "math-verify reads a product 1*0"),
    ("\\boxed{1 000}", "1000", 1, 0, "the same with a plain space"),
    ("\\boxed{70~\\text{cm}}", "70", 1, 0,
     "~ is LaTeX's non-breaking space, read as \\, or \\ are; math-verify does not parse it"),
    ("\\boxed{5.}", "5", 1, 0,
     "a trailing full stop ends the sentence; math-verify does not parse `5.`"),
]


def _math_verify(response: str, gold: str) -> int:
    from math_verify import parse, verify

    return int(verify(parse("\\boxed{" + gold + "}"), parse(response)))


def test_table_is_large_enough():
    assert len(AGREE) + len(DELIBERATE) >= 60


@pytest.mark.parametrize("response, gold, verdict", AGREE)
def test_score_agrees_with_math_verify(response, gold, verdict):
    assert _math_verify(response, gold) == verdict, "math-verify changed: update the table"
    assert score(response, gold) == verdict


@pytest.mark.parametrize("response, gold, aster_verdict, math_verify_verdict, why", DELIBERATE)
def test_score_deliberate_differences(response, gold, aster_verdict, math_verify_verdict, why):
    assert _math_verify(response, gold) == math_verify_verdict, "math-verify changed: " + why
    assert score(response, gold) == aster_verdict, why
