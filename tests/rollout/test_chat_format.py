"""The chat-format probes under the real templates (Qwen3 hybrid, Qwen3-4B-Thinking-2507, the
tiny default's, Qwen2.5) and a template that cannot do append-only tool turns."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from aster.cli import main
from aster.data.formats import make_call
from aster.rollout.chat import apply_template, parse_tool_calls, user_message
from aster.rollout.chat_format import ChatFormat, ChatTemplateError
from tests.qwen3.templates import QWEN25

CALL = ('<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(1)"}}\n'
        '</tool_call>')
TOOL_TURN = "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
# (generation prompt, sampled text of: a turn with reasoning and a call, a turn with empty
# reasoning and a call, a final turn without reasoning), as each template renders them
EXPECTED = {
    "hybrid": ("<|im_start|>assistant\n",
               "<think>\nr\n</think>\n\n" + CALL, "<think>\n\n</think>\n\n" + CALL,
               "<think>\n\n</think>\n\n\\boxed{1}"),
    "tiny": ("<|im_start|>assistant\n",
             "<think>\nr\n</think>\n\n" + CALL, "<think>\n\n</think>\n\n" + CALL,
             "<think>\n\n</think>\n\n\\boxed{1}"),
    "thinking": ("<|im_start|>assistant\n<think>\n",
                 "r\n</think>\n\n" + CALL, "\n</think>\n\n" + CALL, "\n</think>\n\n\\boxed{1}"),
    "qwen25": ("<|im_start|>assistant\n",  # no reasoning handling: the content as written
               "<think>\nr\n</think>\n" + CALL, "<think>\n\n</think>\n" + CALL, "\\boxed{1}"),
}


def _tokenizer(template_tokenizers, name):
    if name == "qwen25":
        tok = copy.copy(template_tokenizers["hybrid"])
        tok.chat_template = QWEN25
        return tok
    return template_tokenizers[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probes_under_each_template(template_tokenizers, name):
    tok = _tokenizer(template_tokenizers, name)
    fmt = ChatFormat(tok)
    gen, with_reasoning, empty_reasoning, final = EXPECTED[name]
    eos = tok.eos_token
    assert fmt.generation_prompt == gen and fmt.opens_think == gen.endswith("<think>\n")
    assert fmt.tool_text(["5"]) == TOOL_TURN + gen
    two = fmt.tool_text(["a", "b"])
    assert two == ("\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\n"
                   "b\n</tool_response><|im_end|>\n" + gen)
    assert fmt.assistant_text({"role": "assistant", "content": "<think>\nr\n</think>",
                               "tool_calls": [make_call("print(1)")]}) == with_reasoning + eos
    assert fmt.assistant_text({"role": "assistant", "content": "<think>\n\n</think>",
                               "tool_calls": [make_call("print(1)")]}) == empty_reasoning + eos
    assert fmt.assistant_text({"role": "assistant", "content": "\\boxed{1}"}) == final + eos
    # special tokens are single ids in every piece
    assert tok.decode(fmt.tool_ids(["5"])) == fmt.tool_text(["5"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pieces_are_the_template_where_it_is_append_only(template_tokenizers, name):
    """A conversation whose every turn has reasoning renders append-only under every Qwen
    template: prompt + (turn + tool turn)* is then exactly the template's own rendering."""
    tok = _tokenizer(template_tokenizers, name)
    fmt = ChatFormat(tok)
    turns = [{"role": "assistant", "content": f"<think>\nstep {i}\n</think>",
              "tool_calls": [make_call(f"print({i})")]} for i in range(3)]
    messages = [user_message("q")]
    text = fmt.prompt_text(messages)
    for i, turn in enumerate(turns):
        text += fmt.assistant_text(turn) + fmt.tool_text([f"{i}\n"])
        messages += [turn, {"role": "tool", "content": f"{i}\n"}]
    assert text == apply_template(tok, messages, add_generation_prompt=True)


BROKEN = {
    # renders only user and assistant turns: tool outputs would never reach the model
    "drops tool messages": "{% for m in messages %}{% if m.role != 'tool' %}<|im_start|>"
                           "{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "refuses tool messages": "{% for m in messages %}{% if m.role == 'tool' %}"
                             "{{ raise_exception('tool role not supported') }}{% endif %}"
                             "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    "no end-of-turn token": "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n"
                            "{% endfor %}{% if add_generation_prompt %}### assistant: {% endif %}",
}


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_a_template_without_append_only_tool_turns_is_a_one_line_error(template_tokenizers,
                                                                       problem):
    tok = copy.copy(template_tokenizers["hybrid"])
    tok.chat_template = BROKEN[problem]
    with pytest.raises(ChatTemplateError) as err:
        ChatFormat(tok)
    assert "\n" not in str(err.value)


def test_eval_with_such_a_template_exits_2_in_one_line(qwen3_dirs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(qwen3_dirs["hybrid"], model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = BROKEN["drops tool messages"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "aime.jsonl"
    data.write_text(json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n")
    rc = main(["eval", "--model", str(model), "--data", str(data), "--k", "1", "--device", "cpu",
               "-o", str(tmp_path / "out"), "rollout.engine=hf", "eval.max_tokens=8"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert err.count("aster: error:") == 1 and last.startswith("aster: error: ")
    assert "tool messages" in last


def test_a_call_mentioned_in_the_reasoning_is_not_a_call():
    text = ("<think>\nI will write <tool_call> with JSON, then check it.\n</think>\n\n" + CALL)
    (call,) = parse_tool_calls(text)
    assert call.error is None and call.code == "print(1)"
    # a thinking template's sampled text starts inside <think>
    assert [c.code for c in parse_tool_calls("maybe <tool_call> later\n</think>\n\n" + CALL,
                                             in_think=True)] == ["print(1)"]
    assert parse_tool_calls("still thinking about <tool_call>", in_think=True) == []
    assert parse_tool_calls("<think>\nunfinished " + CALL) == []  # reasoning never closed
