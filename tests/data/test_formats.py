"""SFT / prompt layouts: load into the internal form, write back, malformed rows, hub names."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aster.data.formats import load_sft, write_sft
from aster.data.io import DataError
from aster.data.prompts import SUFFIX, load_prompts, user_turn, write_prompts
from aster.data.sanitize import sanitize_text

CALL = {"name": "code_interpreter", "arguments": {"code": "x = 6 * 7\nprint(x)"}}


def _sharegpt_row(extra_calls: int = 0) -> dict:
    turns = [{"role": "user", "content": "What is 6*7+1?"}]
    for i in range(1 + extra_calls):
        turns.append({"role": "function", "content": f"I will compute it {i}.\n"
                                                     + json.dumps(CALL)})
        turns.append({"role": "tool", "content": "42\n"})
    turns.append({"role": "assistant", "content": "<think>done</think>\\boxed{43}"})
    return {"conversations": turns, "tools": json.dumps([{"name": "code_interpreter",
                                                          "parameters": {}}])}


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_sharegpt_parquet_loads_and_writes_back(tmp_path):
    src = tmp_path / "aster_sft.parquet"
    bad = {"conversations": [{"role": "user", "content": "x"},
                             {"role": "function", "content": "no call here"}], "tools": "[]"}
    pq.write_table(pa.Table.from_pylist([_sharegpt_row(), bad, _sharegpt_row(2)]), src)
    loaded = load_sft(src)
    assert loaded.layout == "sharegpt" and len(loaded.examples) == 2
    assert loaded.skipped.count == 1 and "no {\"name\"" in loaded.skipped.reasons[0]
    msgs = loaded.examples[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["content"] == "<think>\nI will compute it 0.\n</think>"
    assert msgs[1]["tool_calls"][0]["function"] == CALL
    assert loaded.examples[0]["tools"][0]["function"]["name"] == "code_interpreter"
    out = tmp_path / "back.parquet"
    write_sft(loaded.examples, out, loaded.layout)
    again = load_sft(out)
    assert again.layout == "sharegpt" and again.examples == loaded.examples
    assert pq.read_table(out).column_names == ["conversations", "tools"]


def test_openai_messages_and_aster_jsonl(tmp_path):
    openai = {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "reasoning_content": "think",
         "tool_calls": [{"id": "c1", "type": "function", "function": {
             "name": "code_interpreter", "arguments": json.dumps(CALL["arguments"])}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "\\boxed{42}"}], "answer": "42"}
    src = tmp_path / "oa.jsonl"
    _write_jsonl(src, [openai, "{not json", {"messages": [{"role": "robot", "content": "x"}]}])
    loaded = load_sft(src)
    assert loaded.layout == "openai" and len(loaded.examples) == 1
    assert loaded.skipped.count == 2
    assert "not JSON" in loaded.skipped.reasons[0] and "robot" in loaded.skipped.reasons[1]
    ex = loaded.examples[0]
    assert ex["messages"][1]["content"] == "<think>\nthink\n</think>"
    assert ex["messages"][1]["tool_calls"][0]["function"]["arguments"] == CALL["arguments"]
    assert ex["answer"] == "42"
    out = tmp_path / "oa_back.jsonl"
    write_sft(loaded.examples, out, "openai")
    row = json.loads(out.read_text())
    assert isinstance(row["messages"][1]["tool_calls"][0]["function"]["arguments"], str)
    aster_out = tmp_path / "mine.jsonl"
    write_sft(loaded.examples, aster_out, "aster")
    assert load_sft(aster_out).layout == "aster"
    assert load_sft(aster_out).examples == loaded.examples


def test_tool_message_without_call_is_malformed(tmp_path):
    src = tmp_path / "x.jsonl"
    _write_jsonl(src, [{"messages": [{"role": "user", "content": "q"},
                                     {"role": "tool", "content": "1"},
                                     {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match="no usable rows.*answers no call"):
        load_sft(src)


def test_hub_name_and_missing_file_errors(tmp_path):
    with pytest.raises(DataError, match="Hugging Face dataset name.*local"):
        load_prompts("BytedTsinghua-SIA/DAPO-Math-17k")
    with pytest.raises(DataError, match="not found"):
        load_sft(tmp_path / "missing.jsonl")


def test_suffix_applied_exactly_once():
    once = user_turn("Find x.")
    assert once == f"Find x.\n\n{SUFFIX}"
    assert user_turn(once) == once
    assert user_turn(f"\nFind x.\n{SUFFIX}\n") == once


def test_verl_prompts_round_trip_and_sanitize(tmp_path):
    rows = [{"data_source": "aime", "prompt": [{"role": "user", "content":
                                                f"\nLet $x=\x0crac{{1}}{{2}}$ in $\triangle ABC$.\n{SUFFIX}\n"}],
             "reward_model": {"ground_truth": "7", "style": "rule"}, "id": 3},
            {"data_source": "aime", "prompt": [{"role": "user", "content": "no answer"}],
             "reward_model": {"ground_truth": "", "style": "rule"}, "id": 4}]
    src = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    loaded = load_prompts(src)
    assert loaded.layout == "verl" and loaded.skipped.count == 1
    p = loaded.prompts[0]
    assert p["problem"] == "Let $x=\\frac{1}{2}$ in $\\triangle ABC$."
    assert p["answer"] == "7" and p["data_source"] == "aime" and p["extra"] == {"id": 3}
    assert loaded.sanitized.rows_touched == 1
    out = tmp_path / "back.parquet"
    write_prompts(loaded.prompts, out, loaded.layout)
    back = pq.read_table(out).to_pylist()[0]
    assert back["prompt"][0]["content"].count(SUFFIX) == 1
    assert back["reward_model"]["ground_truth"] == "7" and back["id"] == 3


def test_plain_jsonl_prompts(tmp_path):
    src = tmp_path / "hmmt.jsonl"
    _write_jsonl(src, [{"problem": "1+1?", "answer": 2}, {"question": "2+2?", "answer": "4"},
                       {"problem": "no answer"}])
    loaded = load_prompts(src)
    assert [p["answer"] for p in loaded.prompts] == ["2", "4"]
    assert loaded.skipped.count == 1 and "no answer" in loaded.skipped.reasons[0]


def test_sanitize_leaves_legit_whitespace():
    text = "for(i=0;i<3;++i){\n\tdraw((i,0));\n}\nnot a command"
    assert sanitize_text(text)[0] == text
    fixed, report = sanitize_text("a \x0c\\frac{1}{2} and \x0e")
    assert fixed == "a \\frac{1}{2} and \x0e" and report.unrepaired


def test_first_row_with_messages_not_a_list_is_skipped_not_a_crash(tmp_path):
    import json

    from aster.data.formats import load_sft

    good = {"messages": [{"role": "user", "content": "1+1?"},
                         {"role": "assistant", "content": "\\boxed{2}"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"messages": "not a list"}) + "\n" + json.dumps(good) + "\n")
    loaded = load_sft(path)
    assert len(loaded.examples) == 1 and loaded.skipped.count == 1


def test_form_feed_of_a_pdf_ligature_is_text_not_an_escape():
    fixed, report = sanitize_text("the fi\x0cve, the \x0cfirst, satis\x0ces, by \x0ctting; "
                                  "$\x0crac{1}{2}$ and $D=\x0c \x0c$")
    assert fixed == "the five, the first, satisfies, by fitting; $\\frac{1}{2}$ and $D=\x0c \x0c$"
    assert report.repaired["form feed of a 'fi' ligature"] == 4
    assert report.unrepaired["'\\x0c'"] == 2  # spacing: left as is, reported


def test_stats_on_a_prompt_file(tmp_path, capsys):
    from aster.cli import main

    src = tmp_path / "dapo.parquet"
    rows = [{"data_source": "math_dapo", "prompt": [{"role": "user", "content": f"{i}+1?"}],
             "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
             "acc_mean@8": i / 8} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), src)
    assert main(["data", "stats", str(src), "--json", str(tmp_path / "s.json")]) == 0
    assert "4 prompts (verl layout" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["integer_answers"] == 4 and summary["source math_dapo"] == 4
    assert summary["acc_mean@8 max"] == 0.375
