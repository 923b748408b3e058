"""Token rows for a forward pass, packed or right-padded: the one place SFT and RL build them.

Packed: every sequence of a micro batch in one row, position ids restarting at 0 per sequence,
no attention mask. The model's attention splits the row on the position-id resets: the
backend's varlen attention (`attn_implementation(packed=True)`: transformers' flash
integration, or the CPU backend's per-sequence sdpa), else, for an attention implementation
without it (sdpa, eager), a block-diagonal causal mask that transformers' mask utilities build
from the resets. No padding token is computed.

Padded: one row per sequence, right-padded to the longest, with an attention mask.

Either way the trained positions come out flat, in sequence order: (row, col) is the position
whose hidden state predicts the trained token `labels[k]`, the token at index `token_index[k]`
of sequence `seq[k]`. The same sequences give the same labels in the same order packed or
padded, so per-token results can be compared directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger("aster")


@dataclass
class Rows:
    """A micro batch's model inputs and its trained positions (see the module docstring)."""

    input_ids: torch.Tensor  # [B, T]; packed: [1, sum of lengths]
    attention_mask: torch.Tensor | None  # [B, T]; None when packed
    position_ids: torch.Tensor | None  # [1, T] restarting per sequence; None when padded
    rows: torch.Tensor  # [N]
    cols: torch.Tensor  # [N]
    labels: torch.Tensor  # [N]
    seq: torch.Tensor  # [N] which sequence of the micro batch each trained token is in
    token_index: torch.Tensor  # [N] its index within that sequence (>= 1)

    def to(self, device) -> Rows:
        return Rows(*(None if (t := getattr(self, f)) is None else t.to(device)
                      for f in self.__dataclass_fields__))


def build_rows(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], *,
               packed: bool, pad_id: int = 0) -> Rows:
    """Rows of `seqs` (token ids) whose tokens with mask 1 are trained (`masks[b]` is as long
    as `seqs[b]`; its first entry is ignored: nothing predicts a sequence's first token).

    An empty list gives one pad token and no trained position: a micro batch with nothing to
    train still runs a forward, so ranks with fewer micro batches join every collective."""
    if not seqs:
        ids = torch.full((1, 1), pad_id, dtype=torch.long)
        empty = torch.zeros(0, dtype=torch.long)
        return Rows(ids, None if packed else torch.ones_like(ids),
                    torch.zeros_like(ids) if packed else None, empty, empty, empty, empty, empty)
    lengths = [len(s) for s in seqs]
    if packed:
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)[None]
        pos = torch.cat([torch.arange(n) for n in lengths])[None]
        attn = None
    else:
        width = max(lengths)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.as_tensor(s, dtype=torch.long)
            attn[b, :len(s)] = 1
        pos = None
    rows, cols, seq, index = [], [], [], []
    offset = 0
    for b, (mask, n) in enumerate(zip(masks, lengths)):
        if len(mask) != n:
            raise ValueError(f"sequence {b}: {n} tokens but a mask of {len(mask)}")
        i = torch.nonzero(torch.as_tensor(mask, dtype=torch.bool)[1:]).view(-1) + 1
        rows.append(torch.full_like(i, 0 if packed else b))
        cols.append(i - 1 + (offset if packed else 0))
        seq.append(torch.full_like(i, b))
        index.append(i)
        offset += n
    rows, cols = torch.cat(rows), torch.cat(cols)
    return Rows(ids, attn, pos, rows, cols, ids[rows, cols + 1], torch.cat(seq),
                torch.cat(index))


def use_packing(enabled: bool, backend, key: str) -> bool:
    """`key` (sft.packing, rl.packing): varlen attention where the backend has it; elsewhere
    the attention implementation (sdpa, eager) gets a block-diagonal causal mask that
    transformers builds from the position-id resets (correct, but a dense [T, T] mask per
    pack: its cost grows with the square of the pack, so keep such packs small)."""
    if enabled and not backend.capabilities.packed_attention:
        log.info("%s on --device %s: a block-diagonal attention mask per pack (no varlen "
                 "attention here)", key, backend.name)
    return enabled
