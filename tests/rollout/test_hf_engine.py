"""HFEngine's batching: threads of the calling thread, shared prefill of duplicate prompts,
length buckets and mask-free unpadded batches, with outputs unchanged."""

from __future__ import annotations

import threading

import pytest
import torch

from aster.rollout.engine import SamplingParams
from aster.rollout.hf_engine import HFEngine, length_buckets


class Recorder:
    """Wraps the model's forward: records rows, attention mask and torch threads per call."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.forward = model.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            self.calls.append({"rows": kwargs["input_ids"].shape[0],
                               "width": kwargs["input_ids"].shape[1],
                               "mask": kwargs.get("attention_mask") is not None,
                               "threads": torch.get_num_threads()})
            return self.forward(*args, **kwargs)

        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        self.model.forward = self.forward


@pytest.fixture(scope="module")
def engine(tiny_dir, one_thread):
    return HFEngine(tiny_dir, max_batch_size=8)


def _prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 250, (n,), generator=gen).tolist() for n in lengths]


def _params(n, tokens=6):
    return [SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=100 + i)
            for i in range(n)]


def test_length_buckets():
    lengths = [40, 41, 90, 12, 40, 88, 30]
    batches = length_buckets(lengths, max_rows=3, max_padding=0.5)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[:2] == [[2, 5], [1, 0, 4]]  # longest first; 41 is over half of 90 short
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3
        assert all(width - lengths[i] <= 0.5 * width for i in b)
    assert batches[-1] == [3]  # 12 would be padded to 30, 60% of the row
    # no padding allowed: only equal lengths share a batch
    assert length_buckets([5, 5, 6, 5], 8, 0.0) == [[2], [0, 1, 3]]
    assert length_buckets([], 8, 0.5) == []


def test_duplicates_prefilled_once_and_outputs_unchanged(engine):
    prompts = [p for p in _prompts([30, 30]) for _ in range(4)]  # 2 prompts x G=4
    params = _params(len(prompts))
    with Recorder(engine.model) as rec:
        batched = engine.generate(prompts, params)
    prefill = rec.calls[0]
    assert prefill["rows"] == 2 and prefill["width"] == 30  # the distinct prompts only
    assert not prefill["mask"]  # equal lengths: nothing padded, no mask
    for prompt, param, out in zip(prompts, params, batched):
        (alone,) = engine.generate([prompt], [param])
        assert out.token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(alone.logprobs),
                                   atol=1e-5, rtol=0)


def test_padding_bounded_by_buckets(engine):
    prompts = _prompts([100, 95, 20, 18, 100])
    with Recorder(engine.model) as rec:
        engine.generate(prompts, _params(len(prompts), tokens=2))
    prefills = [c for c in rec.calls if c["width"] > 1]
    # left padding 20 -> 100 would be 80% of the row: the short prompts get their own batch
    assert sorted((c["rows"], c["width"]) for c in prefills) == [(2, 20), (3, 100)]
    assert all(c["mask"] for c in prefills)  # 95 < 100 and 18 < 20: padded, masked


def test_generate_uses_the_engine_thread_count_in_any_thread(engine):
    # A worker thread that first ran torch ops under another setting keeps that count; the
    # engine must decode with the count it was built with (the trainer's).
    assert engine.num_threads == 1
    seen = {}

    def worker():
        torch.set_num_threads(2)
        torch.ones(1000).sum()
        with Recorder(engine.model) as rec:
            engine.generate(_prompts([10]), _params(1, tokens=2))
        seen["during"] = {c["threads"] for c in rec.calls}
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["during"] == {1}
    assert seen["after"] == 2  # the caller's setting is restored
    assert torch.get_num_threads() == 1


def test_bad_settings(tiny_dir):
    with pytest.raises(ValueError, match="num_threads"):
        HFEngine(tiny_dir, num_threads=0)
    with pytest.raises(ValueError, match="max_padding"):
        HFEngine(tiny_dir, max_padding=1.0)


def _full_sequence_logprobs(model, prompt, tokens):
    """log p(token) of each generated token from one forward over prompt + tokens (no cache)."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    at = torch.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1)
    return logp[at, torch.tensor(tokens)]


def test_decode_writes_the_cache_in_place(engine, monkeypatch):
    """transformers' DynamicLayer concatenates the whole cache at every decode step; the
    engine's layers must not (GrowingLayer writes in place). Left-padded rows that finish at
    different steps (rows leave the cache) still get the log-probs of a cache-free forward."""
    from transformers.cache_utils import DynamicLayer

    def concatenating_update(*args, **kwargs):
        raise AssertionError("DynamicLayer.update (a torch.cat of the whole cache) was called")

    monkeypatch.setattr(DynamicLayer, "update", concatenating_update)
    prompts = _prompts([30, 24, 29])
    params = [SamplingParams(max_new_tokens=n, temperature=1.0, seed=7 + n) for n in (9, 3, 6)]
    outs = engine.generate(prompts, params)
    monkeypatch.undo()
    for prompt, param, out in zip(prompts, params, outs):
        assert len(out.token_ids) == param.max_new_tokens or out.finish_reason == "stop"
        torch.testing.assert_close(torch.tensor(out.logprobs),
                                   _full_sequence_logprobs(engine.model, prompt, out.token_ids),
                                   atol=1e-4, rtol=0)


def test_growing_layer_grows_past_its_capacity_and_selects_rows(engine):
    """A cache sized too small grows and keeps every token; dropping rows keeps the rest's
    keys and values: logits equal transformers' DynamicCache step for step."""
    from transformers import DynamicCache

    from aster.rollout.hf_engine import GrowingLayer, growing_cache

    model = engine.model
    ids = torch.tensor(_prompts([12, 12, 12], seed=3))
    ours, theirs = growing_cache(model.config, 13), DynamicCache(config=model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in ours.layers)
    with torch.no_grad():
        for step in range(8):
            if step == 4:  # row 1 finished
                keep = torch.tensor([0, 2])
                ours.batch_select_indices(keep)
                theirs.batch_select_indices(keep)
                ids = ids[keep]
            a = model(input_ids=ids, past_key_values=ours, use_cache=True).logits[:, -1]
            b = model(input_ids=ids, past_key_values=theirs, use_cache=True).logits[:, -1]
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
            ids = a.argmax(-1, keepdim=True)
    assert ours.get_seq_length() == theirs.get_seq_length() == 12 + 7
    assert ours.layers[0]._k.shape[-2] >= 19  # grown from 13
