"""Bad input gives one line on stderr and exit status 2, before a run directory is written."""

import json

from aster.cli import main


def _error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aster:")]
    assert len(err) == 1, err
    return err[0]


def test_missing_model_path(tmp_path, capsys):
    rc = main(["train", "-o", str(tmp_path / "run"), f"model.path={tmp_path / 'nope'}"])
    assert rc == 2
    assert "model.path" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_unknown_config_key(tmp_path, capsys):
    rc = main(["train", "-o", str(tmp_path / "run"), "sft.learning_rate=1e-4"])
    assert rc == 2
    line = _error_line(capsys)
    assert "sft.learning_rate" in line and "'sft.lr'" in line  # aster's name, not a lookalike


def test_dataset_of_malformed_rows(tmp_path, capsys):
    bad = tmp_path / "sft.jsonl"
    bad.write_text("\n".join([json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "{broken json",
                              json.dumps({"conversations": []})]) + "\n")
    rc = main(["train", "-o", str(tmp_path / "run"), f"data.sft_path={bad}",
               "run.stages=[sft]", "data.synthetic.num_sft=2", "data.synthetic.num_rl=2",
               "data.synthetic.num_eval=2"])
    assert rc == 2
    assert "no usable rows" in _error_line(capsys)


def test_resume_without_a_run(tmp_path, capsys):
    rc = main(["train", "--resume", "-o", str(tmp_path / "empty")])
    assert rc == 2
    assert "--resume" in _error_line(capsys)
