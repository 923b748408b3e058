"""The tiny in-process model: a random-init Qwen3 causal LM and a byte-level BPE tokenizer.

`build_tiny_model` writes an ordinary Hugging Face model directory (config, weights, tokenizer
with a Qwen3 / Hermes tool chat template), so everything downstream loads it exactly like a
real checkpoint: `AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained`,
or `vllm.LLM(dir)`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from aster.rollout.templates import CHAT_TEMPLATE

log = logging.getLogger("aster")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass
class TinyModelConfig:
    """The in-process Qwen3-architecture model used when model.path is empty."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 32  # vLLM's CPU attention needs >= 32
    intermediate_size: int = 128
    vocab_size: int = 512  # the byte-level BPE tokenizer trained in-process
    max_position_embeddings: int = 4096
    # the std of the random init (transformers' `initializer_range`, 0.02 by default, sized for
    # wide models): at hidden 128 a larger init lets the tiny default's copy circuit form early
    # in SFT on every seed of its grid (docs/tiny-default.md)
    init_std: float = 0.02

    def __post_init__(self):
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                    "intermediate_size", "max_position_embeddings"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.tiny.{key}={getattr(self, key)!r} must be >= 1")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.tiny.num_kv_heads={self.num_kv_heads!r} must divide "
                             f"model.tiny.num_heads={self.num_heads!r}")
        if not 0 < self.init_std <= 1:
            raise ValueError(f"model.tiny.init_std={self.init_std!r} must be in (0, 1]")
        if self.vocab_size < 300:
            raise ValueError(f"model.tiny.vocab_size={self.vocab_size!r} must be >= 300 (the "
                             "byte-level tokenizer's 256 bytes, its special tokens, merges)")
        if self.head_dim < 32:
            raise ValueError(f"model.tiny.head_dim={self.head_dim} must be >= 32 "
                             "(vLLM's CPU attention rejects smaller heads)")



_DEFAULT_CORPUS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "<|im_start|>user\nWhat is 17 * 23 + 5?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    "Let me compute it with Python.\n</think>\n\n<tool_call>\n{\"name\": \"code_interpreter\", "
    "\"arguments\": {\"code\": \"x = 17 * 23\\nprint(x + 5)\"}}\n</tool_call><|im_end|>\n"
    "<|im_start|>user\n<tool_response>\n396\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nThe answer is \\boxed{396}.<|im_end|>\n",
    "def f(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n    return total\n"
    "print(f(10))\nimport math\nprint(math.gcd(12, 18), math.factorial(5))\n",
    "Traceback (most recent call last):\nNameError: name 'y' is not defined\n",
    "The quick brown fox jumps over the lazy dog. Therefore the result is an integer.",
]


def default_corpus() -> list[str]:
    """The built-in BPE training text: chat format, arithmetic, Python code and numbers."""
    lines = list(_DEFAULT_CORPUS)
    for a in range(2, 40, 3):
        for b in range(3, 30, 7):
            lines.append(f"x = {a} * {b} + {a - b}\nprint(x)\n{a * b + a - b}\n"
                         f"{a} + {b} = {a + b}, {a} - {b} = {a - b}, \\boxed{{{a * b}}}")
    return lines


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None):
    """A byte-level BPE PreTrainedTokenizerFast with the chat template and special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus or default_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_qwen3_config(tiny_cfg, vocab_size: int):
    """The transformers Qwen3Config for `tiny_cfg` (a TinyModelConfig)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=tiny_cfg.hidden_size,
        intermediate_size=tiny_cfg.intermediate_size, num_hidden_layers=tiny_cfg.num_layers,
        num_attention_heads=tiny_cfg.num_heads, num_key_value_heads=tiny_cfg.num_kv_heads,
        head_dim=tiny_cfg.head_dim, max_position_embeddings=tiny_cfg.max_position_embeddings,
        tie_word_embeddings=False, torch_dtype="float32", rope_theta=10000.0,
        initializer_range=tiny_cfg.init_std)


def build_tiny_model(out_dir, tiny_cfg=None, seed: int = 0,
                     corpus: list[str] | None = None) -> str:
    """Write a random-init tiny Qwen3 model + tokenizer to `out_dir`; return the path.

    `tiny_cfg` is a TinyModelConfig (default: its defaults). The tokenizer's
    vocabulary may come out smaller than `tiny_cfg.vocab_size` on a small corpus; the model's
    embedding is sized `tiny_cfg.vocab_size` either way (padded rows are never produced).
    """
    from transformers import Qwen3ForCausalLM

    tiny_cfg = tiny_cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tiny_cfg.vocab_size, corpus)
    vocab_size = max(tiny_cfg.vocab_size, len(tokenizer))
    config = tiny_qwen3_config(tiny_cfg, vocab_size)
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config.bos_token_id = None
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "aster_tiny.json").write_text(json.dumps({"seed": seed, **vars(tiny_cfg)}, indent=1))
    log.debug("tiny model written to %s (vocab %d)", out, vocab_size)
    return str(out)


def load_model_and_tokenizer(path, device=None, dtype: str | torch.dtype = "float32",
                             attn_implementation: str | None = None):
    """`from_pretrained` for a model directory (tiny or real) onto `device`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer
