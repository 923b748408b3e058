"""A tiny teacher model that really uses the tool: the random-init tiny model trained until it
reproduces two stateful tool trajectories token for token (greedy), a few seconds on CPU."""

from __future__ import annotations

import pytest
import torch

from aster.data.formats import CODE_INTERPRETER_TOOL, make_call
from aster.rollout.chat import prompt_messages


def teacher_conversation(a: int, b: int) -> list[dict]:
    """What the teacher learns for "What is a * b + 5?": x defined, then used; boxed answer."""
    return [*prompt_messages(f"What is {a} * {b} + 5?"),
            {"role": "assistant", "content": "<think>\nmultiply first\n</think>",
             "tool_calls": [make_call(f"x = {a} * {b}\nprint(x)")]},
            {"role": "tool", "content": f"{a * b}\n"},
            {"role": "assistant", "content": "", "tool_calls": [make_call("print(x + 5)")]},
            {"role": "tool", "content": f"{a * b + 5}\n"},
            {"role": "assistant", "content": f"<think>\ndone\n</think>\n\n\\boxed{{{a * b + 5}}}"}]


TAUGHT = [(17, 23), (31, 12)]


def _memorise(model, encoded, max_steps: int = 300) -> int:
    """Train until the argmax at every assistant position is the target; return the steps."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    batch = [(torch.tensor([e.ids]), torch.tensor(e.mask[1:]).bool()) for e in encoded]
    for step in range(max_steps):
        loss, exact = 0.0, True
        for ids, mask in batch:
            logits = model(input_ids=ids).logits[0, :-1][mask]
            target = ids[0, 1:][mask]
            loss = loss + torch.nn.functional.cross_entropy(logits, target)
            exact = exact and bool((logits.argmax(-1) == target).all())
        if exact:
            return step
        opt.zero_grad()
        loss.backward()
        opt.step()
    raise AssertionError(f"the tiny teacher did not memorise its trajectories in {max_steps} "
                         "steps")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random-init tiny model directory (its tokenizer has the Qwen3 tool template)."""
    from aster.tiny_model import TinyModelConfig, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_data") / "model", TinyModelConfig(),
                            seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def pool():
    from aster.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(SandboxConfig(max_sessions=8, timeout_s=5.0)) as p:
        yield p


@pytest.fixture(scope="session")
def teacher_dir(tiny_dir, tmp_path_factory):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aster.train.sft import encode_conversation

    path = str(tmp_path_factory.mktemp("teacher") / "model")
    shutil.copytree(tiny_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = [encode_conversation(tokenizer, teacher_conversation(a, b), [CODE_INTERPRETER_TOOL])
               for a, b in TAUGHT]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
        _memorise(model, encoded)
        model.save_pretrained(path)
    finally:
        torch.set_num_threads(threads)
    return path
