"""The tiny model directory loads like a real checkpoint and renders the Qwen3 tool format."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aster.rollout.chat import CODE_INTERPRETER_TOOL
from aster.tiny_model import SPECIAL_TOKENS, TinyModelConfig, build_tiny_model
from tests.qwen3.shapes import SHAPES
from tests.qwen3.templates import hybrid_template

TOOLS = [{"type": "function", "function": {
    "name": "code_interpreter", "description": "Run Python code.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                   "required": ["code"]}}}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TinyModelConfig(), seed=0)


def test_build_is_fast_and_deterministic(tmp_path):
    start = time.perf_counter()
    a = build_tiny_model(tmp_path / "a", TinyModelConfig(), seed=3)
    assert time.perf_counter() - start < 5.0
    b = build_tiny_model(tmp_path / "b", TinyModelConfig(), seed=3)
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("init_std", [0.02, 0.1])
def test_init_std_sets_the_random_init(tmp_path, init_std):
    """model.tiny.init_std reaches the weights (transformers' initializer_range): the tiny
    default's copy skill depends on it (docs/tiny-default.md)."""
    path = build_tiny_model(tmp_path, TinyModelConfig(hidden_size=128, init_std=init_std), seed=0)
    weights = AutoModelForCausalLM.from_pretrained(path).state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight",
                 "model.embed_tokens.weight"):
        assert weights[name].std().item() == pytest.approx(init_std, rel=0.05), name


def test_loads_with_auto_classes(tiny_dir):
    cfg = TinyModelConfig()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen3"
    assert model.config.head_dim == cfg.head_dim >= 32
    assert model.config.vocab_size >= len(tok)
    assert len(tok) <= cfg.vocab_size
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in SPECIAL_TOKENS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1, special
    out = model(torch.tensor([tok.encode("print(1+2)")]))
    assert out.logits.shape[-1] == model.config.vocab_size


def test_chat_template_renders_hermes_tool_format(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {
             "name": "code_interpreter", "arguments": {"code": "print(2+3)"}}}]},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "\\boxed{5}"},
    ]
    text = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '"name": "code_interpreter"' in text.split("\n</tools>")[0]
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "code_interpreter", "arguments": '
            '{"code": "print(2+3)"}}\n</tool_call><|im_end|>\n') in text
    assert "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n" in text
    # real Qwen3: the last turn gets an empty think block when it has no reasoning
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n\\boxed{5}<|im_end|>\n")
    prompt = tok.apply_chat_template(messages[:1], tools=TOOLS, tokenize=False,
                                     add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    # byte-level BPE round-trips arbitrary text, special tokens included
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_reasoning_content_renders_as_think(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"},
         {"role": "assistant", "reasoning_content": "plan", "content": "\\boxed{1}"}],
        tokenize=False)
    assert "<|im_start|>assistant\n<think>\nplan\n</think>\n\n\\boxed{1}<|im_end|>" in text


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_tiny_template_renders_as_the_real_qwen3_template(tiny_dir, shape):
    """String for string with the real hybrid template of Qwen3's tokenizer_config.json, on
    every conversation shape the tests use, with and without the generation prompt."""
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    real = AutoTokenizer.from_pretrained(tiny_dir)
    real.chat_template = hybrid_template()
    messages = SHAPES[shape]
    for tools in ([CODE_INTERPRETER_TOOL], None):
        for gen in (False, True):
            want = real.apply_chat_template(messages, tools=tools, tokenize=False,
                                            add_generation_prompt=gen)
            got = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                          add_generation_prompt=gen)
            assert got == want, (shape, tools is not None, gen)
