import json

import pytest  # noqa: F401
import torch
from transformers import AutoTokenizer

from aster.data.formats import CODE_INTERPRETER_TOOL, make_call
from aster.train.sft import collate_padded, encode_conversation, encode_dataset

CONV = [{"role": "user", "content": "USERTEXT What is 2+3?"},
        {"role": "assistant", "content": "<think>\nplan\n</think>",
         "tool_calls": [make_call("x = 2 + 3\nprint(x)")]},
        {"role": "tool", "content": "TOOLOUT 5"},
        {"role": "assistant", "content": "<think>\ndone\n</think>\n\n\\boxed{5}"}]


def test_loss_mask_covers_assistant_tokens_only(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode_conversation(tok, CONV, [CODE_INTERPRETER_TOOL])
    trained = tok.decode([i for i, m in zip(enc.ids, enc.mask) if m])
    masked = tok.decode([i for i, m in zip(enc.ids, enc.mask) if not m])
    assert "USERTEXT" in masked and "TOOLOUT" in masked and "code_interpreter\", \"description" \
        in masked.replace("\\", "")
    assert "USERTEXT" not in trained and "TOOLOUT" not in trained
    assert "x = 2 + 3" in trained and "\\boxed{5}" in trained and "plan" in trained
    assert trained.count("<|im_end|>") == 2  # each assistant turn learns to stop
    assert "<|im_start|>" not in trained  # the turn headers are given, not learnt
    full = tok.decode(enc.ids)
    # the template's rendering, up to the last end-of-turn token (where a rollout ends too)
    rendered = tok.apply_chat_template(CONV, tools=[CODE_INTERPRETER_TOOL], tokenize=False)
    assert full + "\n" == rendered


def test_over_cutoff_samples_are_dropped_and_counted(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = [dict(m) for m in CONV]
    long[0] = {"role": "user", "content": "word " * 2000}
    kept, dropped = encode_dataset(tok, [{"messages": CONV}, {"messages": long}], 1000)
    assert dropped == 1 and len(kept) == 1
    assert len(kept[0].ids) <= 1000


def test_padded_batch_labels_are_the_next_assistant_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    kept, _ = encode_dataset(tok, [{"messages": CONV}, {"messages": CONV[:2]}], 4096)
    batch = collate_padded(kept, 0, "cpu")
    for r, c, label in zip(batch["rows"], batch["cols"], batch["labels"]):
        e = kept[int(r)]
        assert e.mask[int(c) + 1] == 1 and e.ids[int(c) + 1] == int(label)
    assert batch["labels"].numel() == sum(sum(e.mask[1:]) for e in kept)
    assert json.dumps(batch["attention_mask"].sum(1).tolist()) == json.dumps(
        [len(e.ids) for e in kept])
    assert torch.all(batch["attention_mask"][1, len(kept[1].ids):] == 0)
