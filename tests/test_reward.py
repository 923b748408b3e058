"""Answer extraction and scoring on AIME (integers), HMMT (LaTeX) and DAPO answer formats."""

from __future__ import annotations

import threading

import pytest

from aster.reward import extract_answer, score


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


def test_score_off_main_thread():
    # math-verify's timeout uses SIGALRM; scoring from a worker thread must still work.
    out = []
    thread = threading.Thread(target=lambda: out.append(score("\\boxed{\\sqrt{8}}",
                                                              "2\\sqrt{2}")))
    thread.start()
    thread.join()
    assert out == [1.0]
