"""SFT rows as real files have them: each one trains under the real Qwen3 templates and the
tiny one, or is skipped and counted with its reason; a run never dies on one row."""

from __future__ import annotations

import json
import logging

import pytest

from aster.data.formats import load_sft
from aster.train.sft import encode_dataset
from tests.qwen3.files import sft4k_rows, write_sft4k

TEMPLATES = ("hybrid", "thinking", "tiny")


def _codes(example) -> list[list[str]]:
    return [[c["function"]["arguments"]["code"] for c in m["tool_calls"]]
            for m in example["messages"] if m.get("tool_calls")]


def test_sft4k_row_shapes_load(tmp_path):
    write_sft4k(tmp_path / "sft.parquet")
    loaded = load_sft(tmp_path / "sft.parquet")
    assert loaded.layout == "sharegpt" and len(loaded.examples) == 5
    assert loaded.skipped.count == 1 and "row 5" in loaded.skipped.reasons[0]
    assert "<tool_call> block is not JSON" in loaded.skipped.reasons[0]
    empty, parallel, tagged, mention, empty_tagged = loaded.examples
    assert empty["messages"][1]["content"] == "<think>\n\n</think>"  # kept as written
    assert empty["messages"][-1]["content"] == "The answer is \\boxed{396}."
    assert _codes(parallel) == [["a = 2 ** 10", "print(a - 24)"], ["b = a - 24", "print(b)"]]
    assert parallel["messages"][4]["content"] == "<think>\nAnd as two tagged calls.\n</think>"
    assert _codes(tagged) == [["print(99 * 3)"]]
    assert "<tool_call>" not in tagged["messages"][1]["content"]
    # the call the reasoning mentions stays reasoning; the real call is parsed
    assert _codes(mention) == [["print(12 * 12)"]]
    assert mention["messages"][1]["content"] == (
        "<think>\nI will write <tool_call> with the code, as the format says.\n</think>")
    assert _codes(empty_tagged) == [["print(7 + 8)"]]


def test_reasoning_content_and_inline_calls(tmp_path):
    sharegpt = {"conversations": [
        {"role": "user", "content": "q"},
        {"role": "function", "content": json.dumps({"name": "code_interpreter",
                                                    "arguments": {"code": "print(1)"}}),
         "reasoning_content": "Run it."},
        {"role": "tool", "content": "1\n"},
        {"role": "assistant", "content": "\\boxed{1}", "reasoning_content": "One."}]}
    openai = {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "reasoning_content": "",  # empty, in the field
         "tool_calls": [{"id": "a", "type": "function", "function": {
             "name": "code_interpreter", "arguments": "{\"code\": \"print(2)\"}"}}]},
        {"role": "tool", "content": "2\n"},
        # a converter left the call in the text: it becomes the turn's call
        {"role": "assistant", "content": "<think>\nmaybe <tool_call>?\n</think>\n\nAgain.\n"
                                         "<tool_call>\n{\"name\": \"code_interpreter\", "
                                         "\"arguments\": {\"code\": \"print(3)\"}}\n</tool_call>"},
        {"role": "tool", "content": "3\n"},
        {"role": "assistant", "content": "\\boxed{3}"}]}
    (tmp_path / "s.jsonl").write_text(json.dumps(sharegpt) + "\n")
    (tmp_path / "o.jsonl").write_text(json.dumps(openai) + "\n")
    s = load_sft(tmp_path / "s.jsonl").examples[0]["messages"]
    assert s[1]["content"] == "<think>\nRun it.\n</think>" and _codes({"messages": s}) == [
        ["print(1)"]]
    assert s[3]["content"] == "<think>\nOne.\n</think>\n\n\\boxed{1}"
    o = load_sft(tmp_path / "o.jsonl").examples[0]["messages"]
    assert o[1]["content"] == "" and _codes({"messages": o}) == [["print(2)"], ["print(3)"]]
    assert o[3]["content"] == "<think>\nmaybe <tool_call>?\n</think>\n\nAgain."


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_shape_trains_and_a_bad_row_is_skipped(template_tokenizers, name, tmp_path,
                                                     caplog):
    tok = template_tokenizers[name]
    write_sft4k(tmp_path / "sft.parquet")
    examples = load_sft(tmp_path / "sft.parquet").examples
    # content None: the hybrid template fails on it (`'</think>' in None`), Thinking-2507
    # renders it as empty text; either way the run goes on
    odd = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}
    with caplog.at_level(logging.WARNING, logger="aster"):
        kept, dropped = encode_dataset(tok, [*examples, odd], 32768)
    assert dropped == 0
    if name == "thinking":
        assert len(kept) == len(examples) + 1
    else:
        assert len(kept) == len(examples)
        assert "skipped 1 of 6 conversations (first: row 5: the chat template" in caplog.text
    rows = sft4k_rows()
    for enc, row in zip(kept[:len(examples)], rows):
        trained = tok.decode([t for t, m in zip(enc.ids, enc.mask) if m])
        masked = tok.decode([t for t, m in zip(enc.ids, enc.mask) if not m])
        for turn in row["conversations"]:
            if turn["role"] in ("user", "tool"):
                assert turn["content"] in masked and turn["content"] not in trained
        assert trained.count(tok.eos_token) == sum(
            t["role"] in ("function", "assistant") for t in row["conversations"])
        assert "<|im_start|>" not in trained


def test_plain_text_reasoning_that_names_the_tag(tmp_path):
    """A function turn without think tags whose reasoning names <tool_call>, then bare JSON."""
    row = {"conversations": [
        {"role": "user", "content": "q"},
        {"role": "function", "content": "I answer with a <tool_call> block.\n"
                                        + json.dumps({"name": "code_interpreter",
                                                      "arguments": {"code": "print(5)"}})},
        {"role": "tool", "content": "5\n"}, {"role": "assistant", "content": "\\boxed{5}"}]}
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    (ex,) = load_sft(tmp_path / "r.jsonl").examples
    assert _codes(ex) == [["print(5)"]]
    assert ex["messages"][1]["content"] == "<think>\nI answer with a <tool_call> block.\n</think>"
