"""The ASTER_SFT4K parquet layout end to end: load, write back, curate, and the SFT trainer's
loss mask on its rows.

The layout (as the published reproduction's converter writes it): `conversations` is a list
of {role, content} with roles user / function / tool / assistant; a `function` turn is
``<think>\\n{reasoning}\\n</think>\\n\\n`` followed by one ``{"name", "arguments"}`` call as JSON
(a list of them for parallel calls); an `assistant` turn is the think block and the final text;
`tools` is a JSON string of the tool schemas.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from aster.cli import main
from aster.data.formats import load_sft, write_sft
from aster.train.sft import encode_conversation

TOOLS = json.dumps([{"type": "function", "function": {
    "name": "code_interpreter", "description": "A tool for executing code.",
    "parameters": {"type": "object", "properties": {
        "code": {"type": "string", "description": "The code to execute."}},
        "required": ["code"]}}}])
SCHEMA = pa.schema([("conversations", pa.list_(pa.struct([("role", pa.string()),
                                                          ("content", pa.string())]))),
                    ("tools", pa.string())])


def _function(reasoning: str, *codes: str) -> dict:
    calls = [{"name": "code_interpreter", "arguments": {"code": c}} for c in codes]
    payload = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
    return {"role": "function", "content": f"<think>\n{reasoning}\n</think>\n\n{payload}"}


def _row(n_calls: int, answer: int, problem: str = "Find n.") -> dict:
    turns = [{"role": "user", "content": f"{problem}\n\nPlease reason step by step, and put "
                                         "your final answer within \\boxed{}."}]
    for i in range(n_calls):
        if i == 1:  # parallel calls in one turn, answered by two tool turns
            turns.append(_function("two at once", f"a{i} = {i}", f"print(a{i} + 1000)"))
            turns += [{"role": "tool", "content": "(no output)"},
                      {"role": "tool", "content": f"{i + 1000}\n"}]
            continue
        reasoning = "" if i == 2 else f"step {i}: déjà vu ∑"  # empty reasoning; non-ASCII
        turns.append(_function(reasoning, f"x{i} = {i} * 7\nprint(x{i})"))
        turns.append({"role": "tool", "content": f"{i * 7}\n"})
    turns.append({"role": "assistant",
                  "content": f"<think>\nall done\n</think>\n\nThe answer is \\boxed{{{answer}}}."})
    return {"conversations": turns, "tools": TOOLS}


def _write(path, rows) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)


def test_sft4k_parquet_round_trip_and_curate(tmp_path, capsys):
    src = tmp_path / "aster_sft4k.parquet"
    rows = [_row(10, 7, "p0"), _row(3, 7, "p1"), _row(12, 9, "p2"), _row(9, 5, "p3")]
    _write(src, rows)
    loaded = load_sft(src)
    assert loaded.layout == "sharegpt" and len(loaded.examples) == 4
    ex = loaded.examples[0]
    assert ex["tools"] == json.loads(TOOLS)
    first, parallel = ex["messages"][1], ex["messages"][3]
    assert first["content"] == "<think>\nstep 0: déjà vu ∑\n</think>"
    assert first["tool_calls"][0]["function"]["arguments"] == {"code": "x0 = 0 * 7\nprint(x0)"}
    assert len(parallel["tool_calls"]) == 2 and parallel["content"] == "<think>\ntwo at once\n</think>"

    back = tmp_path / "back.parquet"
    write_sft(loaded.examples, back, loaded.layout)
    assert pq.read_table(back).schema == SCHEMA  # the same layout, column for column
    assert pq.read_table(back).to_pylist() == rows  # byte for byte, empty reasoning included
    again = load_sft(back)
    assert again.layout == "sharegpt" and again.examples == loaded.examples

    # curate (answers are not in the layout: no correctness filter) writes the layout it read
    cur = tmp_path / "curated.parquet"
    assert main(["data", "curate", str(src), str(cur), "--min-tool-calls", "9"]) == 0
    assert "tool_calls < 9" in capsys.readouterr().out
    assert pq.read_table(cur).schema == SCHEMA
    assert pq.read_table(cur).to_pylist() == [rows[0], rows[2], rows[3]]


def test_sft4k_bare_tool_schemas_load_to_the_same_form(tmp_path):
    bare = dict(_row(2, 7), tools=json.dumps([json.loads(TOOLS)[0]["function"]]))
    _write(tmp_path / "bare.parquet", [bare])
    _write(tmp_path / "wrapped.parquet", [_row(2, 7)])
    assert load_sft(tmp_path / "bare.parquet").examples == \
        load_sft(tmp_path / "wrapped.parquet").examples


def _runs(enc) -> list[tuple[int, list[int]]]:
    """Maximal runs of equal mask: (mask value, ids)."""
    runs: list[tuple[int, list[int]]] = []
    for i, m in zip(enc.ids, enc.mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(i)
        else:
            runs.append((m, [i]))
    return runs


def test_sft_loss_mask_is_exactly_the_function_and_assistant_turns(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    row = _row(4, 7)
    _write(tmp_path / "one.parquet", [row])
    ex = load_sft(tmp_path / "one.parquet").examples[0]
    enc = encode_conversation(tok, ex["messages"], ex["tools"])
    trained = [tok.decode(ids) for m, ids in _runs(enc) if m]
    # one trained span per function / assistant turn, each exactly that turn as rendered
    expected = []
    for turn in row["conversations"]:
        if turn["role"] == "assistant":
            expected.append(turn["content"] + tok.eos_token)
        elif turn["role"] == "function":
            think, _, payload = turn["content"].partition("</think>\n\n")
            calls = json.loads(payload)
            calls = calls if isinstance(calls, list) else [calls]
            body = "\n".join('<tool_call>\n{"name": "code_interpreter", "arguments": '
                             + json.dumps(c["arguments"], ensure_ascii=False) + "}\n</tool_call>"
                             for c in calls)
            # as real Qwen3 renders it: a blank line between the reasoning and the call
            expected.append(f"{think}</think>\n\n{body}{tok.eos_token}")
    assert trained == expected
    masked = tok.decode([i for i, m in zip(enc.ids, enc.mask) if not m])
    for turn in row["conversations"]:
        if turn["role"] in ("user", "tool"):
            assert turn["content"] in masked
    assert "code_interpreter\", \"description" in masked.replace("\\", "")  # the tool schema
