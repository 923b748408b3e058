"""The tiny in-process model: a random-init Qwen3 causal LM and a byte-level BPE tokenizer.

`build_tiny_model` writes an ordinary Hugging Face model directory (config, weights, tokenizer
with a Qwen3 / Hermes tool chat template), so everything downstream loads it exactly like a
real checkpoint: `AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained`,
or `vllm.LLM(dir)`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger("aster")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# The real Qwen3 chat template (the hybrid-thinking one of Qwen3-0.6B ... Qwen3-32B), verbatim
# (Apache-2.0): the tiny default renders every conversation the way a real Qwen3 checkpoint
# does (tools in the system turn, reasoning split off at `</think>`, an empty think block on
# the last turn only, reasoning before the last user message dropped, tool messages grouped
# in a user turn as <tool_response>). tests/test_tiny_model.py compares it with the real file.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
    """The transformers Qwen3Config for `tiny_cfg` (an aster.config.TinyModelConfig)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=tiny_cfg.hidden_size,
        intermediate_size=tiny_cfg.intermediate_size, num_hidden_layers=tiny_cfg.num_layers,
        num_attention_heads=tiny_cfg.num_heads, num_key_value_heads=tiny_cfg.num_kv_heads,
        head_dim=tiny_cfg.head_dim, max_position_embeddings=tiny_cfg.max_position_embeddings,
        tie_word_embeddings=False, torch_dtype="float32", rope_theta=10000.0)


def build_tiny_model(out_dir, tiny_cfg=None, seed: int = 0,
                     corpus: list[str] | None = None) -> str:
    """Write a random-init tiny Qwen3 model + tokenizer to `out_dir`; return the path.

    `tiny_cfg` is an aster.config.TinyModelConfig (default: its defaults). The tokenizer's
    vocabulary may come out smaller than `tiny_cfg.vocab_size` on a small corpus; the model's
    embedding is sized `tiny_cfg.vocab_size` either way (padded rows are never produced).
    """
    from transformers import Qwen3ForCausalLM

    if tiny_cfg is None:
        from aster.config import TinyModelConfig

        tiny_cfg = TinyModelConfig()
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
