"""One rendering truth: a rollout trajectory converted to messages encodes for SFT to the ids the
model produced and saw, with the same loss mask, under the real Qwen3 hybrid template, the
Qwen3-4B-Thinking-2507 one and the tiny default's; and a conversation read from a file encodes
the way the agent loop would have generated it."""

from __future__ import annotations

import json

import pytest

from aster.data.trajectory import TrajectoryConverter
from aster.rollout import RolloutConfig, run_rollouts
from aster.rollout.chat import apply_template, prompt_messages
from aster.rollout.chat_format import chat_format
from aster.train.sft import encode_conversation, encode_segments
from tests.qwen3.shapes import SHAPES
from tests.rollout.conftest import ScriptedEngine

TEMPLATES = ("hybrid", "thinking", "tiny")


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter",
                                         "arguments": {"code": code}}) + "\n</tool_call>"


# What a Qwen3 model samples (canonical spelling), as the hybrid template renders each turn
# when it is the last: reasoning with a literal <tool_call> in it, empty reasoning with two
# calls, text next to a call, a final answer without reasoning.
TURNS = [
    "<think>\nMultiply first; I could also type <tool_call> by hand.\n</think>\n\n"
    + _call("x = 17 * 23\nprint(x)"),
    "<think>\n\n</think>\n\n" + _call("a = x + 5") + "\n" + _call("print(a)"),
    "<think>\nCheck it.\n</think>\n\nLet me verify once more.\n" + _call("print(a == 396)"),
    "<think>\n\n</think>\n\nThe answer is \\boxed{396}.",
]


def _sampled_turns(name: str) -> list[str]:
    # Thinking-2507's generation prompt opens <think>: the model samples from inside it
    return [t.removeprefix("<think>\n") for t in TURNS] if name == "thinking" else TURNS


@pytest.fixture(scope="module")
def pool():
    from aster.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(SandboxConfig(max_sessions=4, timeout_s=5.0)) as p:
        yield p


@pytest.mark.parametrize("name", TEMPLATES)
def test_rollout_to_messages_to_sft_gives_the_same_ids_and_mask(template_tokenizers, pool, name):
    tok = template_tokenizers[name]
    engine = ScriptedEngine(tok, _sampled_turns(name))
    messages = prompt_messages("What is 17 * 23 + 5?")
    (traj,) = run_rollouts(engine, pool, [{"messages": messages, "answer": "396"}],
                           RolloutConfig(max_response_tokens=4096, max_tool_calls=8),
                           tokenizer=tok)
    assert traj.finish_reason == "answer" and traj.reward == 1.0
    assert traj.num_tool_calls == 4 and traj.tool_errors == 0  # the mention was not a call
    example = TrajectoryConverter(tok).example(traj, messages, "396")
    calls = [c["function"]["arguments"]["code"] for m in example["messages"]
             for c in m.get("tool_calls", [])]
    assert calls == ["x = 17 * 23\nprint(x)", "a = x + 5", "print(a)", "print(a == 396)"]
    enc = encode_conversation(tok, example["messages"], example["tools"])
    assert enc.ids == traj.prompt_ids + traj.response_ids
    assert enc.mask == [0] * len(traj.prompt_ids) + traj.loss_mask
    # the template's rendering of the whole conversation drops the empty think block of the
    # second turn: SFT on it would train ids the model never produced
    whole = apply_template(tok, example["messages"])
    assert whole.rstrip("\n") != tok.decode(enc.ids)


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("shape", sorted(s for s in SHAPES if s != "prompt_only"))
def test_file_conversations_encode_as_the_agent_loop_generates(template_tokenizers, name,
                                                               shape):
    """Each query's sequence is: its prompt as the template renders the history, then per
    assistant turn that turn as sampled (trained) and the tool turn after it (masked); every
    assistant turn is trained once."""
    tok = template_tokenizers[name]
    fmt = chat_format(tok)
    messages = SHAPES[shape]
    segments = encode_segments(tok, messages)
    expected, current, i = [], None, 0
    while i < len(messages):
        if messages[i]["role"] != "assistant":
            i += 1
            continue
        if current is None or messages[i - 1]["role"] == "user":
            current = (fmt.prompt_text(messages[:i]), [])
            expected.append(current)
        current[1].append(fmt.assistant_text(messages[i]))
        j = i + 1
        while j < len(messages) and messages[j]["role"] == "tool":
            j += 1
        if j > i + 1 and j < len(messages) and messages[j]["role"] == "assistant":
            current[1].append(fmt.tool_text([m["content"] for m in messages[i + 1:j]]))
        i = j
    assert len(segments) == len(expected)
    for seg, (prompt, pieces) in zip(segments, expected):
        assert tok.decode(seg.ids) == prompt + "".join(pieces)
        trained = tok.decode([t for t, m in zip(seg.ids, seg.mask) if m])
        assert trained == "".join(pieces[0::2])  # the assistant turns, nothing else
    if shape == "system_and_two_queries":
        # real Qwen3 drops the first query's reasoning once a new query follows
        second = tok.decode(segments[-1].ids)
        assert "Multiply." not in second and "\\boxed{396}" in second
