"""HFStreamEngine: the hf engine with continuous batching (`rollout.hf_mode=continuous`).

One decode batch lives on the engine's own thread. Between two decode steps the requests that
came in (trajectory turns whose tool output is in) are prefilled and joined to it: the live
cache and the new rows' cache are left-padded to one width and stacked, the attention mask
marks the padding, and each row keeps its own positions. A finished row leaves the batch at
once and resolves its own future, so its trajectory goes on to its tool call while the others
decode. Leading columns no live row attends to any more are dropped, so the width follows the
longest live context rather than every context the batch ever held.

Sampling, seeds, stop tokens and log-probs are HFEngine's (`_sample`), so a request samples the
same tokens here as in a per-turn batch up to padding numerics.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from aster.errors import CapabilityError
from aster.rollout.engine import GenerationOutput, SamplingParams, SubmittingEngine
from aster.rollout.hf_engine import (
    GROW_TOKENS,
    GrowingLayer,
    HFEngine,
    growing_cache,
    intra_op_threads,
)

_STOP = object()
TRIM_COLUMNS = 64  # drop dead leading columns once there are this many (a copy per trim)


@dataclass
class _Row:
    params: SamplingParams
    gen: torch.Generator
    done: Future
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` [B, ..., L, D] with `n` zero columns before L."""
    if n == 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], n, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)


class HFStreamEngine(SubmittingEngine, HFEngine):
    """HFEngine whose requests join one running decode batch between steps."""

    continuous_batching = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[tuple[list[int], _Row]] = []
        self._rows: list[_Row] = []
        self._cache = self._mask = self._pos = self._logits = None
        self._thread = threading.Thread(target=self._drive, daemon=True, name="aster-hf-stream")
        self._thread.start()

    # ---- caller side ------------------------------------------------------------------------
    def _submit(self, prompt: list[int], params: SamplingParams) -> Future:
        if not prompt:
            raise ValueError("every prompt needs at least one token")
        done: Future = Future()
        gen = (torch.Generator(device="cpu").manual_seed(params.seed) if params.seed is not None
               else self._default_gen)
        self._inbox.put((list(prompt), _Row(params, gen, done)))
        return done

    def close(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout=60)

    # ---- the engine thread ------------------------------------------------------------------
    def _drive(self) -> None:
        with intra_op_threads(self.num_threads), torch.no_grad():
            while True:
                if not self._rows and not self._waiting:
                    item = self._inbox.get()  # idle: block
                    if item is _STOP:
                        return
                    self._waiting.append(item)
                if self._drain():
                    return
                try:
                    self._admit()
                    self._sample_and_finish()
                    if self._rows:
                        self._decode()
                    time.sleep(0)  # hand the GIL to the agent loop (as VLLMStreamEngine)
                except Exception as exc:  # noqa: BLE001 - every waiter hears it, none hangs
                    self._fail(exc)

    def _drain(self) -> bool:
        """Move what came in to the waiting list; True on the stop sentinel."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                self._fail(CapabilityError("the hf engine was closed"))
                return True
            self._waiting.append(item)

    def _admit(self) -> None:
        """Prefill the waiting requests that fit and join them to the live batch."""
        room = self.max_batch_size - len(self._rows)
        if room <= 0 or not self._waiting:
            return
        batch, self._waiting = self._waiting[:room], self._waiting[room:]
        prompts = [p for p, _ in batch]
        logits, mask, pos, cache = self._prefill(prompts, max(r.params.max_new_tokens
                                                             for _, r in batch))
        if mask is None:
            mask = torch.ones((len(prompts), max(len(p) for p in prompts)), dtype=torch.long,
                              device=self.device)
        rows = [r for _, r in batch]
        if not self._rows:
            self._rows, self._cache, self._mask, self._pos = rows, cache, mask, pos
            self._logits = logits
            return
        self._cache = self._joined(self._cache, self._mask.shape[1], cache, mask.shape[1])
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([F.pad(self._mask, (width - self._mask.shape[1], 0)),
                                F.pad(mask, (width - mask.shape[1], 0))])
        self._pos = torch.cat([self._pos, pos])
        self._logits = torch.cat([self._logits, logits])
        self._rows += rows

    def _joined(self, live, live_width: int, new, new_width: int):
        """One cache holding the live rows then the new ones, left-padded to one width."""
        width = max(live_width, new_width)
        out = growing_cache(self.model.config, width + GROW_TOKENS)
        for mine, a, b in zip(out.layers, live.layers, new.layers):
            if not (isinstance(a, GrowingLayer) and isinstance(b, GrowingLayer)):
                raise CapabilityError("rollout.hf_mode=continuous needs full-attention layers "
                                      "only; use rollout.hf_mode=batched for this model")
            keys = torch.cat([_left_pad(a.keys, width - live_width),
                              _left_pad(b.keys, width - new_width)])
            values = torch.cat([_left_pad(a.values, width - live_width),
                                _left_pad(b.values, width - new_width)])
            mine.update(keys, values)
        return out

    def _sample_and_finish(self) -> None:
        keep = []
        for b, row in enumerate(self._rows):
            token, logp = self._sample(self._logits[b], row.params, row.gen)
            row.tokens.append(token)
            row.logps.append(logp)
            if token in row.params.stop_token_ids:
                row.done.set_result(GenerationOutput(row.tokens, row.logps, "stop"))
            elif len(row.tokens) >= row.params.max_new_tokens:
                row.done.set_result(GenerationOutput(row.tokens, row.logps, "length"))
            else:
                keep.append(b)
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[b] for b in keep]
        if not keep:
            self._cache = self._mask = self._pos = self._logits = None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask, self._pos = self._mask[index], self._pos[index]
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns no live row attends to (left padding of rows gone)."""
        live = (self._mask.sum(0) > 0).nonzero()
        lead = int(live[0]) if len(live) else 0
        if lead < TRIM_COLUMNS:
            return
        self._mask = self._mask[:, lead:]
        for layer in self._cache.layers:
            layer.drop_leading(lead)

    def _decode(self) -> None:
        next_ids = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        self._pos = self._pos + 1
        out = self.model(input_ids=next_ids, attention_mask=self._mask, position_ids=self._pos,
                         past_key_values=self._cache, use_cache=True)
        self._logits = out.logits[:, -1]

    def _fail(self, exc: BaseException) -> None:
        rows = self._rows + [r for _, r in self._waiting]
        self._rows, self._waiting = [], []
        self._cache = self._mask = self._pos = self._logits = None
        for row in rows:
            if not row.done.done():
                row.done.set_exception(exc)
