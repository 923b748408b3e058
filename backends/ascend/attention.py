"""Packed (varlen) causal attention on Ascend through torch_npu.npu_fusion_attention.

Layout glue: flash-attn style packed inputs ([total_tokens, heads, head_dim] with cu_seqlens
[0, l0, l0+l1, ...]) map to the fusion attention's TND layout, whose `actual_seq_qlen` /
`actual_seq_kvlen` are the *cumulative* end offsets, i.e. cu_seqlens[1:]. Causality uses
sparse_mode 3 (right-down aligned causal) with the fixed 2048x2048 upper-triangular mask the
kernel expects (it is a compressed pattern, not a per-sequence mask). transformers' own NPU
integration (attn_implementation="flash_attention_2" with torch_npu present) makes the same
call for padded batches; this module serves aster's packed SFT path.
"""

from __future__ import annotations

import torch

CAUSAL_SPARSE_MODE = 3
_MASK_SIDE = 2048
_MASKS: dict[torch.device, torch.Tensor] = {}


def actual_seq_len(cu_seqlens: torch.Tensor | list[int]) -> list[int]:
    """cu_seqlens [0, l0, l0+l1, ...] -> TND actual_seq_len (cumulative ends) as Python ints."""
    values = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    if not values or values[0] != 0 or any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {values[:8]}")
    return [int(v) for v in values[1:]]


def causal_mask(device: torch.device) -> torch.Tensor:
    """The compressed causal mask for sparse_mode 3 (True = masked), cached per device."""
    if device not in _MASKS:
        _MASKS[device] = torch.triu(
            torch.ones(_MASK_SIDE, _MASK_SIDE, dtype=torch.bool, device=device), diagonal=1)
    return _MASKS[device]


def varlen_causal_attention(torch_npu, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            cu_seqlens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal attention over packed sequences. q [T, Nq, D], k/v [T, Nkv, D] -> [T, Nq, D]."""
    if q.dim() != 3:
        raise ValueError(f"TND layout needs q of shape [tokens, heads, head_dim], got {tuple(q.shape)}")
    ends = actual_seq_len(cu_seqlens)
    if ends and ends[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens ends at {ends[-1]} but q has {q.shape[0]} tokens")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch_npu.npu_fusion_attention(
        q, k, v, q.shape[1], input_layout="TND", pse=None, atten_mask=causal_mask(q.device),
        scale=scale, keep_prob=1.0, actual_seq_qlen=tuple(ends), actual_seq_kvlen=tuple(ends),
        sparse_mode=CAUSAL_SPARSE_MODE)
    return out[0]
