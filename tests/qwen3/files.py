"""Data files in the layouts users bring, with the row shapes real files have:

- ``sft4k.parquet``: the ASTER_SFT4K layout (``conversations`` of {role, content} with roles
  user / function / tool / assistant, ``tools`` a JSON string). Rows: empty reasoning in a
  function turn, a final turn without reasoning, several calls in one turn (a JSON list, and
  two ``<tool_call>`` blocks), function turns wrapped in ``<tool_call>...</tool_call>``
  (LlamaFactory converters), a literal ``<tool_call>`` mentioned inside ``<think>`` before the
  real call, and one malformed row (a ``<tool_call>`` block that is not JSON) that is skipped.
- ``dapo.parquet``: verl / DAPO-Math-17k (``data_source``, ``prompt`` chat list, ``ability``,
  ``reward_model`` {ground_truth, style}, ``extra_info``).
- ``aime25.parquet``: AIME 2025 as published (``id``, ``problem``, ``solution``, ``answer``,
  ``url``, ``year``).

    python -m tests.qwen3.files DIR       (used by .ci/real_qwen3.sh)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOOLS = json.dumps([{"type": "function", "function": {
    "name": "code_interpreter", "description": "A tool for executing code.",
    "parameters": {"type": "object", "properties": {
        "code": {"type": "string", "description": "The code to execute."}},
        "required": ["code"]}}}])
SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."


def _json_call(*codes: str) -> str:
    calls = [{"name": "code_interpreter", "arguments": {"code": c}} for c in codes]
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def _tagged(*codes: str) -> str:
    return "\n".join(f"<tool_call>\n{_json_call(c)}\n</tool_call>" for c in codes)


def _fn(reasoning: str, body: str) -> dict:
    return {"role": "function", "content": f"<think>\n{reasoning}\n</think>\n\n{body}"}


def _tool(text: str) -> dict:
    return {"role": "tool", "content": text}


def _user(problem: str) -> dict:
    return {"role": "user", "content": problem + SUFFIX}


def sft4k_rows() -> list[dict]:
    """Five good rows (each shape once) and one malformed row, last."""
    rows = [
        [_user("What is 17 * 23 + 5?"),
         _fn("", _json_call("x = 17 * 23\nprint(x)")), _tool("391\n"),  # empty reasoning
         _fn("Add five.", _json_call("print(x + 5)")), _tool("396\n"),
         {"role": "assistant", "content": "The answer is \\boxed{396}."}],  # no reasoning
        [_user("What is 2 ** 10 - 24?"),
         _fn("Two cells at once.", _json_call("a = 2 ** 10", "print(a - 24)")),  # a JSON list
         _tool("(no output)"), _tool("1000\n"),
         _fn("And as two tagged calls.", _tagged("b = a - 24", "print(b)")),
         _tool("(no output)"), _tool("1000\n"),
         {"role": "assistant", "content": "<think>\n\n</think>\n\n\\boxed{1000}"}],
        [_user("What is 99 * 3?"),
         _fn("LlamaFactory-style call.", _tagged("print(99 * 3)")), _tool("297\n"),
         {"role": "assistant", "content": "<think>\nDone.\n</think>\n\n\\boxed{297}"}],
        [_user("What is 12 * 12?"),
         _fn("I will write <tool_call> with the code, as the format says.",
             _json_call("print(12 * 12)")), _tool("144\n"),
         {"role": "assistant", "content": "<think>\n144.\n</think>\n\n\\boxed{144}"}],
        [_user("What is 7 + 8?"),
         {"role": "function", "content": "<think>\n\n</think>\n\n" + _tagged("print(7 + 8)")},
         _tool("15\n"), {"role": "assistant", "content": "\\boxed{15}"}],
        [_user("What is 1 + 1?"),
         _fn("Broken.", "<tool_call>\n{\"name\": \"code_interpreter\", \"arguments\": {\"code\""
                        "\n</tool_call>"), _tool("2\n"),
         {"role": "assistant", "content": "\\boxed{2}"}],
    ]
    return [{"conversations": turns, "tools": TOOLS} for turns in rows]


def write_sft4k(path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("conversations", pa.list_(pa.struct([("role", pa.string()),
                                                              ("content", pa.string())]))),
                        ("tools", pa.string())])
    pq.write_table(pa.Table.from_pylist(sft4k_rows(), schema=schema), path)


DAPO_PROBLEMS = [("What is 6 * 7?", "42"), ("What is 100 - 37?", "63"),
                 ("What is 2 ** 5?", "32"), ("What is 81 / 9?", "9")]


def write_dapo(path, n: int = 4) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = ("Solve the following math problem step by step. The last line of your response "
            "should be of the form Answer: $Answer (without quotes) where $Answer is the answer "
            "to the problem.\n\n")
    tail = "\n\nRemember to put your answer on its own line after \"Answer:\"."
    rows = [{"data_source": "math_dapo",
             "prompt": [{"content": head + p + tail, "role": "user"}], "ability": "MATH",
             "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": f"dapo-{i}"}}
            for i, (p, a) in enumerate(DAPO_PROBLEMS[:n])]
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_aime(path, n: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = [("Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of "
                 "$97_b$.", "70"),
                ("Find the number of ordered pairs $(x,y)$, where both $x$ and $y$ are "
                 "integers between $-100$ and $100$ inclusive, such that $12x^2-xy-6y^2=0$.",
                 "117")]
    rows = [{"id": i, "problem": p, "solution": "", "answer": a,
             "url": f"https://artofproblemsolving.com/wiki/index.php/2025_AIME_I_Problems/"
                    f"Problem_{i + 1}", "year": 2025}
            for i, (p, a) in enumerate(problems[:n])]
    pq.write_table(pa.Table.from_pylist(rows), path)


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    out.mkdir(parents=True, exist_ok=True)
    write_sft4k(out / "sft4k.parquet")
    write_dapo(out / "dapo.parquet")
    write_aime(out / "aime25.parquet")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
