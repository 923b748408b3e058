"""Packed (varlen) causal attention on CPU: one causal sdpa call per sequence of a packed row.

transformers' sdpa over a packed row (several sequences in one row, position ids restarting at
each) attends under a dense [T, T] block-diagonal mask built from the position-id resets, and
torch's CPU sdpa skips the blocks a causal pattern rules out only under `is_causal`, never
under a mask: a pack of n sequences costs T^2 instead of sum(L_i^2) / 2. Measured on the tiny
Qwen3 shape (2 threads): 16 sequences of 572 tokens in one row, forward + backward 3.9 s under
the mask, 0.43 s split here, 0.39 s as 16 padded rows. This is what flash-attn's varlen kernel
does on CUDA through transformers' flash integration, done with the CPU's own kernels.

The CPU backend's training models load with this implementation (NAME): a packed row without
an attention mask is split on its position-id resets; everything else (padded rows with a
mask, sliding-window layers) goes to transformers' sdpa unchanged. The mask builder returns
no mask exactly when the attention below builds the structure itself (no padding mask, no
sliding window), so no [T, T] mask is made.

The hf rollout engine's model loads DECODE_NAME, which also runs a grouped-query layer under a
mask (the engine's left-padded batches) with sdpa's `enable_gqa` instead of transformers'
copy of every KV head (repeat_kv: the whole cache, every layer, every decode step; measured
on the tiny model's 128-row decode, 37 ms vs 3.6 ms per layer call, identical output).
Training keeps transformers' path there: the same math in another fp32 summation order, and
the tiny default's SFT (padded rows) is that sensitive: with it, the run of 2026-11-28
ended SFT at 20% held-out accuracy instead of 66% (the skill's abrupt appearance moved).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "aster_varlen_sdpa"  # training models
DECODE_NAME = "aster_decode_sdpa"  # the hf engine's model


def sequence_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sequence of one packed row: a new one wherever the position id is
    not its predecessor's + 1 (transformers' own packed-sequence rule)."""
    pos = position_ids.reshape(-1)
    breaks = torch.nonzero(pos[1:] != pos[:-1] + 1).view(-1) + 1
    edges = [0, *breaks.tolist(), pos.numel()]
    return list(zip(edges[:-1], edges[1:]))


def _splits_itself(module, query, key, attention_mask, position_ids, is_causal, kwargs) -> bool:
    return (attention_mask is None and position_ids is not None and query.shape[0] == 1
            and query.shape[2] == key.shape[2] and kwargs.get("sliding_window") is None
            and is_causal is not False and getattr(module, "is_causal", True))


def _gqa_under_mask(module, query, attention_mask, kwargs) -> bool:
    """A grouped-query layer on CPU under an explicit mask (padded rows: the rollout engine's
    left-padded batches, rl.packing=false) and nothing else sdpa_attention_forward handles."""
    return (attention_mask is not None and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) > 1
            and kwargs.get("position_bias") is None and kwargs.get("cache") is None
            and not kwargs.get("output_attentions", False))


def decode_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None,
                          **kwargs):
    """varlen_sdpa_attention, and a grouped-query layer under a mask without repeat_kv."""
    if _gqa_under_mask(module, query, attention_mask, kwargs):
        # transformers' sdpa copies every KV head n_rep times (repeat_kv) whenever a mask is
        # given: the whole KV cache, every layer, every decode step of a padded batch. torch's
        # CPU sdpa takes the mask with enable_gqa.
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return varlen_sdpa_attention(module, query, key, value, attention_mask, dropout=dropout,
                                 scaling=scaling, is_causal=is_causal, **kwargs)


def varlen_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None,
                          **kwargs):
    """transformers' attention-function signature (query [B, H, T, D], key / value
    [B, Hkv, T, D]) -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if not _splits_itself(module, query, key, attention_mask, position_ids, is_causal, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    parts = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                            dropout_p=dropout, is_causal=True, scale=scaling,
                                            enable_gqa=gqa)
             for s, e in sequence_bounds(position_ids[0])]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(*args, attention_mask=None, local_size=None, **kwargs):
    """transformers' mask-builder signature: no mask where varlen_sdpa_attention splits the
    row itself (no padding mask, no sliding window), else sdpa's mask."""
    if attention_mask is None and local_size is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, local_size=local_size, **kwargs)


def register(decode: bool = False) -> str:
    """Register both attentions and their mask builder with transformers (idempotent);
    returns the attn_implementation name for a training model, or with `decode` for the hf
    engine's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_attention)
    AttentionInterface.register(DECODE_NAME, decode_sdpa_attention)
    for name in (NAME, DECODE_NAME):
        AttentionMaskInterface.register(name, varlen_mask)
    return DECODE_NAME if decode else NAME
