"""`aster rl --filter-records R --filter-out F`: the standalone all-correct filter over recorded
rollouts."""

import json

from aster.cli import main
from aster.data.prompts import load_prompts

PROMPTS = [{"problem": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(1, 6)]
RECORDS = [  # (prompt, epoch, rewards); the last epoch recorded is 1
    (0, 0, [1.0, 1.0]), (1, 0, [1.0, 1.0]), (2, 0, [0.0, 1.0]),
    (0, 1, [1.0, 1.0]),  # G/G in the last epoch: dropped
    (1, 1, [1.0, 0.0]),  # G/G only in an earlier epoch: kept
    (2, 1, [0.0, 0.0]),
    (4, 1, [1.0, 1.0]),  # dropped
]


def _write(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    records = tmp_path / "rollouts" / "rl_stage1.jsonl"
    records.parent.mkdir()
    records.write_text("".join(json.dumps({"prompt": p, "epoch": e, "step": 1 + e,
                                           "rewards": r, "tool_calls": [1] * len(r)}) + "\n"
                               for p, e, r in RECORDS))
    return prompts, records


def test_filter_records_writes_the_kept_prompts(tmp_path, capsys):
    prompts, records = _write(tmp_path)
    out = tmp_path / "kept.jsonl"
    rc = main(["rl", "--filter-records", str(records), "--filter-out", str(out),
               f"data.rl_path={prompts}"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"kept": 3, "dropped": 2, "written": str(out)}
    kept = load_prompts(out).prompts
    assert [p["problem"] for p in kept] == [PROMPTS[i]["problem"] for i in (1, 2, 3)]
    assert [p["answer"] for p in kept] == ["4", "6", "8"]


def test_filter_out_without_records_is_one_line(tmp_path, capsys):
    prompts, _ = _write(tmp_path)
    assert main(["rl", "--filter-out", str(tmp_path / "kept.jsonl"),
                 f"data.rl_path={prompts}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aster:")]
    assert len(err) == 1 and "--filter-records" in err[0]


def test_filter_records_bad_input_is_one_line(tmp_path, capsys):
    prompts, records = _write(tmp_path)
    out = str(tmp_path / "kept.jsonl")
    assert main(["rl", "--filter-records", str(tmp_path / "none.jsonl"), "--filter-out", out,
                 f"data.rl_path={prompts}"]) == 2
    # synthetic prompts: no file
    assert main(["rl", "--filter-records", str(records), "--filter-out", out]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aster:")]
    assert len(err) == 2 and "no such file" in err[0] and "data.rl_path" in err[1]
