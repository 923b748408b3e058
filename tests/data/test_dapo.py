"""DAPO-Math-17k as published: the upstream "Answer:" wrapper is rewritten to the boxed form
(the original kept in `source_prompt`), repeated problems are dropped and reported, and the
problem text equals the public reproduction's rewrite of the same row."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aster.data.prompts import load_prompts, user_turn, write_prompts
from aster.rollout.chat import ANSWER_INSTRUCTION

# the upstream wrapper, as DAPO-Math-17k rows carry it
HEAD = ("Solve the following math problem step by step. The last line of your response "
        "should be of the form Answer: $Answer (without quotes) where $Answer is the answer "
        "to the problem.\n\n")
TAIL = "\n\nRemember to put your answer on its own line after \"Answer:\"."
PROBLEMS = [("Find $\\frac{6}{2} + 4$.", "7"), ("What is $2^{10} - 24$?", "1000"),
            ("Let $x$ satisfy $3x = 12$. Find $x$.\n\n(Give an integer.)", "4")]
# ../shared beside the clone (CI; /work/main), or beside the worktrees' folder (/work/wt/NAME)
_ROOT = Path(__file__).resolve().parents[2]
REAL = next((p for p in (_ROOT.parent / "shared" / "data" / "dapo_stage2.parquet",
                         _ROOT.parent.parent / "shared" / "data" / "dapo_stage2.parquet")
             if p.is_file()), _ROOT.parent / "shared" / "data" / "dapo_stage2.parquet")


def _row(content: str, answer: str, **extra) -> dict:
    return {"data_source": "math_dapo", "prompt": [{"content": content, "role": "user"}],
            "ability": "MATH", "reward_model": {"ground_truth": answer, "style": "rule"},
            **extra}


def _upstream(problem: str) -> str:
    return HEAD + problem + TAIL


def _reproduction(problem: str) -> str:  # Rainyrou/ASTER's rewrite (dapo_stage2.parquet)
    return f"\n{problem}\n{ANSWER_INSTRUCTION}\n"


def _write(rows, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_upstream_wrapper_is_rewritten_to_the_boxed_form(tmp_path, caplog):
    rows = [_row(_upstream(p), a) for p, a in PROBLEMS]
    rows.append(_row(_upstream(PROBLEMS[0][0] + "\n"), "7"))  # upstream repeats, spaced anew
    rows.append(_row(HEAD + PROBLEMS[1][0] + "\n\n\n" + TAIL, "1000"))
    rows.append(_row("What is 1 + 1?", "2"))  # no wrapper: as it was
    with caplog.at_level(logging.INFO, logger="aster"):
        loaded = load_prompts(_write(rows, tmp_path / "dapo.parquet")).prompts
    assert [p["problem"] for p in loaded] == [p for p, _ in PROBLEMS] + ["What is 1 + 1?"]
    for prompt, row in zip(loaded[:3], rows):
        turn = user_turn(prompt["problem"])
        assert "Answer:" not in turn and turn.count(ANSWER_INSTRUCTION) == 1
        assert prompt["extra"]["source_prompt"] == row["prompt"]  # the upstream text kept
    assert "source_prompt" not in (loaded[3].get("extra") or {})
    assert "3 prompts rewritten" in caplog.text
    assert "dropped 2 repeated problems" in caplog.text


def test_rewrite_equals_the_reproductions_prompt(tmp_path):
    up = [_row(_upstream(p), a) for p, a in PROBLEMS]
    repro = [_row(_reproduction(p), a, source_prompt=[{"content": _upstream(p), "role": "user"}])
             for p, a in PROBLEMS]
    mine = load_prompts(_write(up, tmp_path / "up.parquet")).prompts
    theirs = load_prompts(_write(repro, tmp_path / "repro.parquet")).prompts
    assert [p["problem"] for p in mine] == [p["problem"] for p in theirs]
    assert [p["extra"]["source_prompt"] for p in mine] == \
        [p["extra"]["source_prompt"] for p in theirs]
    out = tmp_path / "kept.parquet"  # written back, the original travels with the row
    write_prompts(mine, out, layout="verl")
    assert [p["extra"]["source_prompt"] for p in load_prompts(out).prompts] == \
        [r["prompt"] for r in up]


def test_conflicting_repeats_are_reported(tmp_path, caplog):
    rows = [_row(_upstream("Find $n$."), "5"), _row(_upstream("Find $n$. "), "-1")]
    with caplog.at_level(logging.INFO, logger="aster"):
        loaded = load_prompts(_write(rows, tmp_path / "d.parquet")).prompts
    assert [p["answer"] for p in loaded] == ["5"]
    assert "1 of them answered otherwise than the row kept (rows kept/dropped 0/1)" in caplog.text


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} (the shared data folder) is absent")
def test_every_row_of_the_reproductions_stage2_file():
    """dapo_stage2.parquet: 5,104 rows with `source_prompt` (upstream) and `prompt` (the
    reproduction's rewrite): aster's rewrite of each source_prompt is the same problem text."""
    import pyarrow.parquet as pq

    from aster.data.prompts import problem_of

    rows = pq.read_table(REAL).to_pylist()
    assert len(rows) == 5104
    differ = [i for i, r in enumerate(rows)
              if problem_of({**r, "prompt": r["source_prompt"]}) != problem_of(r)]
    assert differ == []
