"""SFT on CPU: sequence packing gives the same per-token log-probs (hence per-sequence loss) and
gradients as padded batches (position ids restart per sequence, no attention across sequences:
the CPU backend's varlen sdpa splits the row on the resets); bf16 trains."""

import math

import pytest
import torch

from aster.algo import PolicyForward
from aster.backend import select_backend
from aster.config import load_config
from aster.train.common import load_policy
from aster.train.sft import collate_packed, collate_padded, encode_dataset, sft_micro_loss
from tests.train._dist_worker import conversations, max_abs_diff


def _policy(model_dir, *overrides):
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    model, tok = load_policy(str(model_dir), load_config(None, list(overrides)).model, backend)
    return PolicyForward(model, "chunked"), tok


def _logp(policy, batch):
    return policy(batch["input_ids"], batch["attention_mask"], batch["rows"], batch["cols"],
                  batch["labels"], position_ids=batch["position_ids"])


def _grads(policy, batch, num_tokens):
    policy.zero_grad()
    sft_micro_loss(policy, batch, num_tokens).backward()
    return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])


def test_packed_matches_padded(tiny_model_dir):
    policy, tok = _policy(tiny_model_dir)
    convs = conversations(3)
    convs[1]["messages"][0]["content"] += " Please think carefully about it." * 3  # uneven
    data, _ = encode_dataset(tok, convs, 4096)
    assert len({len(e.ids) for e in data}) > 1
    padded, packed = collate_padded(data, tok.pad_token_id or 0, "cpu"), collate_packed(data, "cpu")
    assert packed["input_ids"].shape[0] == 1 and packed["attention_mask"] is None
    assert torch.equal(packed["labels"], padded["labels"])  # same tokens, same order
    with torch.no_grad():
        lp_pad, lp_packed = _logp(policy, padded), _logp(policy, packed)
        torch.testing.assert_close(lp_packed, lp_pad, rtol=0, atol=2e-5)
        # the control: one packed row with positions 0..T-1 (no resets) attends across samples
        leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
        lp_leaky = _logp(policy, leaky)
    first = sum(data[0].mask[1:])  # the first sequence has nothing before it to leak from
    torch.testing.assert_close(lp_leaky[:first], lp_pad[:first], rtol=0, atol=2e-5)
    assert (lp_leaky[first:] - lp_pad[first:]).abs().max() > 1e-2
    num_tokens = float(padded["labels"].numel())
    g_pad, g_packed = _grads(policy, padded, num_tokens), _grads(policy, packed, num_tokens)
    torch.testing.assert_close(g_packed, g_pad, rtol=1e-4, atol=1e-6)


def test_bf16_sft_step_on_cpu(tiny_model_dir, tmp_path):
    """model.dtype=bfloat16 trains on CPU (bf16 compute over fp32 master weights); its first
    loss is the fp32 loss within bf16 error."""
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.sft import run_sft

    overrides = ["model.dtype=bfloat16", "sft.epochs=1", "sft.global_batch_size=2",
                 "sft.micro_batch_size=2", "sft.warmup_ratio=0", "sft.lr=1e-2",
                 "sft.packing=true", "logging.tensorboard=false"]
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    ctx = make_context(load_config(None, overrides), backend, str(tiny_model_dir), tmp_path,
                       MetricsWriter(tmp_path, tensorboard=False))
    assert ctx.compute_dtype == torch.bfloat16
    assert {p.dtype for p in ctx.hf_model.parameters()} == {torch.float32}  # the masters
    before = {k: v.float().clone() for k, v in ctx.hf_model.state_dict().items()}
    data, _ = encode_dataset(ctx.tokenizer, conversations(2), 4096)
    metrics = run_sft(ctx, data)
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    after = ctx.hf_model.state_dict()
    assert max_abs_diff(before, after) > 1e-3
    fp32, _ = _policy(tiny_model_dir, "model.dtype=float32")
    batch = collate_packed(data, "cpu")
    with torch.no_grad():
        ref = sft_micro_loss(fp32, batch, float(batch["labels"].numel())).item()
    assert metrics["loss"] == pytest.approx(ref, rel=2e-2)
