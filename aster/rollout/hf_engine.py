"""HFEngine: batched sampling with a transformers model and its KV cache, on any device.

A hand-written decode loop rather than `model.generate`, so that per-request seeds, stop
tokens and the sampled-token log-prob convention of aster.rollout.engine are exact, and
finished rows leave the batch (and the cache) at once.

Where the time goes on CPU, and what `generate` does about it:
- Intra-op threads are per OS thread in torch: a thread keeps the count it had when it first
  ran a parallel op, and the agent loop calls `generate` from its batcher's worker thread.
  The engine records the count of the thread that built it (what the trainer was given) and
  runs every `generate` with it, whatever thread calls.
- Prefill is most of the work for short responses (a ~470-token tool prompt per row), and a
  GRPO step sends every prompt G times: identical prompts are prefilled once and their KV
  cache rows repeated.
- transformers' DynamicCache appends each decode step by concatenating the whole cache (a
  full copy of every layer's keys and values per token). The engine's cache layers hold them
  in a buffer with room to spare and write each step in place (`GrowingLayer`); measured on the tiny model, 128 rows x 128 tokens at 2 threads,
  this and the CPU backend's GQA attention took `generate` from 10.8 s to under 4 s.
- Requests are left-padded to the longest in their batch. `length_buckets` sorts them by
  length and starts a new batch where padding would dominate a row (more than `max_padding`
  of the batch's width); a batch without padding runs without an attention mask (causal
  SDPA, which on CPU is also the faster prefill kernel).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import torch

# at module level here (not lazily): GrowingLayer subclasses DynamicLayer; only the engine
# factory (lazily, when an hf engine is built) and hf_stream import this module
from transformers import DynamicCache  # noqa: TID253
from transformers.cache_utils import DynamicLayer  # noqa: TID253

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams, state_dict_of
from aster.tiny_model import load_model_and_tokenizer

log = logging.getLogger("aster")


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """fp32 log-probs [V] of the distribution `params` samples from (temperature, top-k,
    top-p applied; tokens outside the kept set get -inf)."""
    temperature = params.temperature if params.temperature > 0 else 1.0
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if params.top_k > 0 and params.top_k < logp.shape[-1]:
        kth = torch.topk(logp, params.top_k).values[-1]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True)
        cum = sorted_logp.exp().cumsum(-1)
        drop_sorted = (cum - sorted_logp.exp()) >= params.top_p  # keep the first over top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    if params.top_k > 0 or params.top_p < 1.0:
        logp = torch.log_softmax(logp, dim=-1)
    return logp


class HFEngine(Engine):
    """Generation with a transformers causal LM (a path, or a module shared with the trainer)."""

    name = "hf"
    supports_sleep = False
    sleep_note = "the hf engine keeps no KV cache between generate() calls: nothing to free"

    def __init__(self, model, device=None, dtype: str | torch.dtype = "float32",
                 attn_implementation: str | None = None, max_batch_size: int = 64,
                 pad_token_id: int | None = None, num_threads: int | None = None,
                 max_padding: float = 0.5):
        if isinstance(model, torch.nn.Module):
            self.model = model
        else:
            self.model, _ = load_model_and_tokenizer(model, device, dtype, attn_implementation)
        self.device = next(self.model.parameters()).device
        self.max_batch_size = max_batch_size
        pad = pad_token_id if pad_token_id is not None else self.model.config.pad_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self._default_gen = torch.Generator(device="cpu").manual_seed(0)
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads={num_threads!r} must be >= 1")
        if not 0 <= max_padding < 1:
            raise ValueError(f"max_padding={max_padding!r} must be in [0, 1)")
        self.num_threads = num_threads or torch.get_num_threads()
        self.max_padding = max_padding

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        outputs: list[GenerationOutput | None] = [None] * len(prompts)
        with intra_op_threads(self.num_threads):
            for batch in length_buckets([len(p) for p in prompts], self.max_batch_size,
                                        self.max_padding):
                outs = self._generate_batch([prompts[i] for i in batch],
                                            [params[i] for i in batch])
                for i, out in zip(batch, outs):
                    outputs[i] = out
        return outputs

    @torch.no_grad()
    def load_weights(self, weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> None:
        if weights is self.model:
            return
        own = self.model.state_dict()
        new = state_dict_of(weights)
        missing = [name for name in own if name not in new]
        if missing:
            raise ValueError(f"load_weights: {len(missing)} weights missing, e.g. {missing[0]}")
        for name, tensor in own.items():
            tensor.copy_(new[name].to(tensor.device, tensor.dtype))

    # ---- the decode loop ------------------------------------------------------------------
    def _prefill(self, prompts: list[list[int]], new_tokens: int):
        """Left-padded prefill of the distinct prompts, the cache rows then repeated for
        duplicates; the cache has room for `new_tokens` more. Returns (last logits, attention
        mask or None when nothing is padded, last positions, cache), one row per prompt."""
        unique: dict[tuple, int] = {}
        row_of = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = list(unique)
        width = max(len(p) for p in distinct)
        ids = torch.full((len(distinct), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(distinct), width), dtype=torch.long)
        for i, prompt in enumerate(distinct):  # left padding: every row ends at one column
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = any(len(p) < width for p in distinct)
        # room for the first GROW_TOKENS new tokens; long responses grow it as they go, so a
        # batch whose rows stop early never holds its worst case
        cache = growing_cache(self.model.config, width + min(new_tokens, GROW_TOKENS))
        out = self.model(input_ids=ids, attention_mask=mask if padded else None,
                         position_ids=positions, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        logits = out.logits[:, -1]
        if len(distinct) < len(prompts):
            index = torch.tensor(row_of, device=self.device)
            cache.batch_select_indices(index)
            logits, mask, positions = logits[index], mask[index], positions[index]
        return logits, (mask if padded else None), positions[:, -1:], cache

    @torch.no_grad()
    def _generate_batch(self, prompts, params) -> list[GenerationOutput]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        gens = [torch.Generator(device="cpu").manual_seed(p.seed) if p.seed is not None
                else self._default_gen for p in params]
        stops = [set(p.stop_token_ids) for p in params]
        tokens: list[list[int]] = [[] for _ in prompts]
        logps: list[list[float]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        logits, mask, pos, cache = self._prefill(prompts,
                                                 max(p.max_new_tokens for p in params))
        rows = list(range(len(prompts)))  # original index of each live batch row
        while rows:
            picked = [self._sample(logits[b], params[i], gens[i]) for b, i in enumerate(rows)]
            keep = []
            for b, i in enumerate(rows):
                token, logp = picked[b]
                tokens[i].append(token)
                logps[i].append(logp)
                if token in stops[i]:
                    reasons[i] = "stop"
                elif len(tokens[i]) >= params[i].max_new_tokens:
                    reasons[i] = "length"
                else:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                pos = pos[index]
                mask = mask[index] if mask is not None else None
                rows = [rows[b] for b in keep]
            next_ids = torch.tensor([[tokens[i][-1]] for i in rows], device=self.device)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            pos = pos + 1
            out = self.model(input_ids=next_ids, attention_mask=mask, position_ids=pos,
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
        return [GenerationOutput(t, lp, r) for t, lp, r in zip(tokens, logps, reasons)]

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, gen) -> tuple[int, float]:
        logp = processed_logprobs(logits.cpu(), params)
        if params.temperature == 0:
            token = int(torch.argmax(logp))
        else:
            token = int(torch.multinomial(logp.exp(), 1, generator=gen))
        return token, float(logp[token])


GROW_TOKENS = 256  # tokens a GrowingLayer adds at a time, at least


def growing_cache(config, capacity: int):
    """A DynamicCache for `config` whose full-attention layers are GrowingLayers of
    `capacity` tokens (other layer kinds, e.g. sliding-window ones, stay transformers')."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


class GrowingLayer(DynamicLayer):
    """transformers' DynamicLayer with its keys and values in a buffer of `capacity` tokens:
    an update writes the new tokens in place and `keys` / `values` are views of the filled
    part, instead of a torch.cat that copies the whole cache every decode step. Past the
    capacity the buffer grows by a quarter (at least GROW_TOKENS): a copy every few hundred
    steps, at most a quarter unused. Only what the engine uses is supported (no crop, no
    repeat_interleave)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(1, int(capacity))
        self._k = self._v = None
        self._len = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:  # (lazy_initialization's signature varies by release)
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
        n = key_states.shape[-2]
        if self._k is None:
            self._k, self._v = self._buffer(key_states), self._buffer(value_states)
        elif self._len + n > self._k.shape[-2]:
            self.capacity = self._len + max(n, GROW_TOKENS, self._len // 4)
            self._k = torch.cat([self._k[..., :self._len, :], self._buffer(key_states)], -2)
            self._v = torch.cat([self._v[..., :self._len, :], self._buffer(value_states)], -2)
        self._k[..., self._len:self._len + n, :] = key_states
        self._v[..., self._len:self._len + n, :] = value_states
        self._len += n
        self.keys, self.values = self._k[..., :self._len, :], self._v[..., :self._len, :]
        return self.keys, self.values

    def _buffer(self, like):
        shape = (*like.shape[:-2], max(self.capacity - self._len, like.shape[-2]), like.shape[-1])
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._len:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self._len, :], self._v[..., :self._len, :]

    def drop_leading(self, n: int) -> None:
        """Forget the first `n` tokens (columns no row attends to any more); a view, no copy."""
        if self._len:
            self._k, self._v = self._k[..., n:, :], self._v[..., n:, :]
            self._len -= n
            self.keys, self.values = self._k[..., :self._len, :], self._v[..., :self._len, :]

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("GrowingLayer does not crop (the hf engine never asks)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("GrowingLayer does not repeat rows (the hf engine never asks)")


def length_buckets(lengths: list[int], max_rows: int, max_padding: float) -> list[list[int]]:
    """Request indices in generation batches: longest first, at most `max_rows` each, and no
    request left-padded by more than `max_padding` of its batch's width (a shorter one starts
    the next batch). Fewer batches mean fewer decode loops (a decode step costs about as much
    for 8 rows as for 64 on CPU), so the cut is only where padding would dominate a row."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    width = 0
    for i in order:
        if batches and len(batches[-1]) < max_rows and \
                width - lengths[i] <= max_padding * width:
            batches[-1].append(i)
        else:
            batches.append([i])
            width = lengths[i]
    return batches


@contextlib.contextmanager
def intra_op_threads(num_threads: int):
    """Run the block with `num_threads` intra-op threads in the calling thread, then restore.

    torch's thread count is per OS thread once a thread has run a parallel op: a worker thread
    created before the trainer set its count, or one that ran ops under another setting,
    keeps its own. torch.set_num_threads also updates the default for new threads; the
    restore puts that back too."""
    before = torch.get_num_threads()
    if before == num_threads:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
