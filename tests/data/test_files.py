"""Data files as users have them: other encodings, `.json` arrays, unknown columns, a byte-order
mark; each either read or a one-line error (exit 2) that names the layouts aster reads."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aster.cli import main
from aster.data.formats import load_sft
from aster.data.io import DataError
from aster.data.prompts import load_prompts

CALL = {"name": "code_interpreter", "arguments": {"code": "print(6 * 7)"}}
SHAREGPT = {"conversations": [{"role": "user", "content": "What is 6*7?"},
                              {"role": "function", "content": "<think>compute</think>\n"
                                                              + json.dumps(CALL)},
                              {"role": "tool", "content": "42\n"},
                              {"role": "assistant", "content": "\\boxed{42}"}]}
PROMPTS = [{"problem": "Café: what is 1+1?", "answer": "2"},
           {"problem": "What is 2+2?", "answer": "4"}]
LAYOUT_WORDS = ("conversations", "messages", "reward_model", "problem", ".json")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aster: error: "), err
    return err[0]


def test_non_utf8_jsonl_is_a_one_line_error_naming_the_layouts(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode("latin-1") + b"\n"
                              for r in PROMPTS))
    with pytest.raises(DataError, match="line 1 is not UTF-8"):
        load_prompts(path)
    for argv in (["data", "stats", str(path)], ["eval", "--data", str(path), "--model", "x"]):
        line = _one_line_error(capsys, argv)
        assert "re-encode" in line and all(w in line for w in LAYOUT_WORDS)


def test_json_array_files_are_read(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS, indent=2, ensure_ascii=False), encoding="utf-8")
    loaded = load_prompts(prompts)
    assert [p["answer"] for p in loaded.prompts] == ["2", "4"]
    sft = tmp_path / "llamafactory.json"  # LlamaFactory's data files are JSON arrays
    sft.write_text(json.dumps([SHAREGPT, SHAREGPT], indent=2))
    loaded = load_sft(sft)
    assert loaded.layout == "sharegpt" and len(loaded.examples) == 2
    one = tmp_path / "one.json"  # one pretty-printed object: one row
    one.write_text(json.dumps(PROMPTS[1], indent=2))
    assert len(load_prompts(one).prompts) == 1


def test_json_lines_in_a_json_file_and_a_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "to_json.json"  # what `Dataset.to_json` writes
    path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS), encoding="utf-8-sig")
    assert len(load_prompts(path).prompts) == 2


def test_line_separator_characters_inside_a_row_do_not_split_it(tmp_path):
    path = tmp_path / "u2028.jsonl"  # json.dumps(ensure_ascii=False) leaves them raw
    rows = [{"problem": "a\u2028b\x85c: 1+1?", "answer": "2"}, PROMPTS[1]]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows))
    loaded = load_prompts(path)
    assert loaded.skipped.count == 0 and loaded.prompts[0]["problem"].startswith("a\u2028b")


def test_broken_json_array_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(PROMPTS, indent=2)[:-10])
    line = _one_line_error(capsys, ["data", "stats", str(path)])
    assert "not valid JSON" in line and "line " in line and "reward_model" in line


@pytest.mark.parametrize("loader, kind", [(load_sft, "SFT trajectories"),
                                          (load_prompts, "prompts")])
def test_parquet_with_unknown_columns_names_them_and_the_layouts(tmp_path, loader, kind):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "1+1?", "a": "2"}, {"q": "x", "a": "y"}]), path)
    with pytest.raises(DataError) as info:
        loader(path)
    message = str(info.value)
    assert f"as {kind} (columns: a, q)" in message and "\n" not in message
    assert all(w in message for w in LAYOUT_WORDS)


def test_unknown_columns_through_the_cli(tmp_path, capsys):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "1+1?", "a": "2"}]), path)
    line = _one_line_error(capsys, ["data", "stats", str(path)])
    assert "(columns: a, q)" in line and "conversations" in line


def test_control_character_repairs_are_reported_once(tmp_path, capsys, caplog):
    path = tmp_path / "ctrl.jsonl"
    rows = [{"problem": "Compute \x0crac{1}{2} + \x0crac{1}{2}.", "answer": "1"},
            {"problem": "What is 2+2?", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "stats", str(path)]) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err + caplog.text
    assert shown.count("repaired control characters in 1 rows") == 1


def test_only_rank_zero_logs_below_error(monkeypatch):
    import logging

    from aster.cli import setup_logging

    logger = logging.getLogger("aster")
    level = logger.level
    try:
        monkeypatch.setenv("RANK", "1")
        setup_logging(False)
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
        logger.setLevel(level)
        monkeypatch.setenv("RANK", "0")
        setup_logging(False)
        assert logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(level)
