"""The CPU backend's varlen attention (aster.backends.cpu.attention) on a real transformers
Qwen3: a packed row split per sequence gives what transformers' sdpa gives under its
block-diagonal mask and what right-padded rows give (log-probs and gradients), and everything
that is not a packed row (padded rows, greedy decoding with a cache) is sdpa's, token for
token."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from aster.algo import PolicyForward, build_micro_batch, policy_logprobs
from aster.backends.cpu.attention import DECODE_NAME, NAME, register, sequence_bounds
from aster.backends.cpu.backend import CPUBackend

LENGTHS = [(7, 1), (3, 30), (12, 5), (1, 9), (20, 20)]  # (prompt, response), odd and tiny


def _model(impl: str) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=128,
                      vocab_size=97, max_position_embeddings=256, tie_word_embeddings=False,
                      attn_implementation=impl)
    return Qwen3ForCausalLM(cfg).float()


def _batch(packed: bool):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (p,), generator=gen).tolist() for p, _ in LENGTHS]
    responses = [torch.randint(3, 97, (r,), generator=gen).tolist() for _, r in LENGTHS]
    return build_micro_batch(prompts, responses, [[1] * r for _, r in LENGTHS], packed=packed)


def _logp_and_grads(impl: str, packed: bool):
    model = _model(impl)
    logp = policy_logprobs(PolicyForward(model, "chunked"), _batch(packed), 1.0)
    (logp * torch.linspace(-1, 1, logp.numel())).sum().backward()
    return logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_backend_names_them_for_training_and_engine_models():
    be = CPUBackend(kernel_impl="chunked", engine="hf")
    assert be.attn_implementation() == DECODE_NAME  # the rollout engine's
    assert be.attn_implementation(packed=True) == NAME and be.capabilities.packed_attention


def test_masked_grouped_query_layers_do_not_copy_the_kv_heads(monkeypatch):
    """transformers' sdpa repeats every KV head under a mask (the engine's left-padded decode:
    the whole cache, every layer, every step); the engine's attention runs sdpa with
    enable_gqa and gives the same logits and gradients."""
    import transformers.integrations.sdpa_attention as hf_sdpa

    register()
    ours, sdpa = _model(DECODE_NAME), _model("sdpa")
    mb = _batch(packed=False)
    reference = sdpa(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    reference[mb.attention_mask.bool()].sum().backward()

    def no_copy(*args, **kwargs):
        raise AssertionError("repeat_kv was called")

    monkeypatch.setattr(hf_sdpa, "repeat_kv", no_copy)
    got = ours(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    got[mb.attention_mask.bool()].sum().backward()
    valid = mb.attention_mask.bool()
    torch.testing.assert_close(got[valid], reference[valid], rtol=0, atol=1e-5)
    for (name, a), b in zip(ours.named_parameters(), sdpa.parameters()):
        # the same math in another summation order: fp32 noise relative to the gradient's scale
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5,
                                   atol=1e-6 * float(b.grad.abs().max()), msg=name)


def test_sequence_bounds_split_on_position_resets():
    pos = torch.tensor([0, 1, 2, 0, 0, 1, 0, 1, 2, 3])
    assert sequence_bounds(pos) == [(0, 3), (3, 4), (4, 6), (6, 10)]
    assert sequence_bounds(torch.arange(5)) == [(0, 5)]


@pytest.mark.parametrize("reference", [("sdpa", True), ("sdpa", False), ("eager", True)])
def test_packed_rows_match_the_masked_and_padded_paths(reference):
    register()
    got = _logp_and_grads(NAME, packed=True)
    want = _logp_and_grads(*reference)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)


def test_a_row_without_resets_attends_across_its_whole_length():
    """The control: with positions 0..T-1 the same tokens are one sequence, so every token
    after the first sequence sees the earlier ones (the split really follows the resets)."""
    register()
    model = _model(NAME)
    mb = _batch(packed=True)
    with torch.no_grad():
        split = policy_logprobs(PolicyForward(model, "chunked"), mb, 1.0)
        mb.position_ids = torch.arange(mb.input_ids.shape[1])[None]
        whole = policy_logprobs(PolicyForward(model, "chunked"), mb, 1.0)
    first = LENGTHS[0][1]  # the first sequence's trained tokens: nothing before them
    torch.testing.assert_close(whole[:first], split[:first], rtol=0, atol=2e-5)
    assert (whole[first:] - split[first:]).abs().max() > 1e-3


def test_padded_rows_and_decoding_are_sdpa_s():
    register()
    ours, sdpa = _model(NAME), _model("sdpa")
    mb = _batch(packed=False)
    with torch.no_grad():
        a = ours(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
        b = sdpa(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    valid = mb.attention_mask.bool()
    torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=1e-5)
    prompt = torch.tensor([[5, 9, 11, 3, 40, 2], [0, 0, 17, 23, 29, 31]])  # left-padded
    mask = (prompt != 0).long()
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kw), sdpa.generate(prompt, **kw))
