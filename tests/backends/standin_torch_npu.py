"""STAND-IN for torch_npu, written in plain torch, for testing aster's Ascend glue on CPU.

It is NOT torch_npu: it implements the documented semantics of the few ops aster calls
(npu_fusion_attention in TND layout with causal sparse_mode 3, npu_rms_norm, npu_rotary_mul,
npu_swiglu) so the glue around them (layouts, cu_seqlens -> actual_seq_qlen, module patching,
env settings) can be checked without an NPU. Numbers on real hardware are checked by the
`npu`-marked tests.
"""

from __future__ import annotations

import importlib.machinery
import types

import torch
import torch.nn.functional as F


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                         atten_mask=None, scale=1.0, keep_prob=1.0, actual_seq_qlen=None,
                         actual_seq_kvlen=None, sparse_mode=0, **_):
    assert input_layout == "TND", "the stand-in only implements the TND layout"
    assert query.shape[1] == head_num
    assert actual_seq_qlen == actual_seq_kvlen and sparse_mode in (0, 3)
    out = torch.empty_like(query)
    start = 0
    groups = query.shape[1] // key.shape[1]
    for end in actual_seq_qlen:  # cumulative ends, as the real op takes them
        q = query[start:end].transpose(0, 1)
        k = key[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        v = value[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=sparse_mode == 3, scale=scale)
        out[start:end] = o.transpose(0, 1)
        start = end
    return out, None, None, None


def npu_rms_norm(x, gamma, epsilon=1e-6):
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + epsilon)
    return (x.float() * rstd).to(x.dtype) * gamma, rstd


def npu_rotary_mul(x, r1, r2, rotary_mode="half"):
    x1, x2 = torch.chunk(x, 2, -1)
    return r1 * x + r2 * torch.cat((-x2, x1), dim=-1)


def npu_swiglu(x, dim=-1):
    a, b = torch.chunk(x, 2, dim=dim)
    return F.silu(a) * b


def make_module(devices: int = 0) -> types.ModuleType:
    """A module object to put in sys.modules["torch_npu"]; `devices` NPUs appear visible."""
    mod = types.ModuleType("torch_npu")
    mod.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    mod.__doc__ = __doc__
    mod.npu_fusion_attention = npu_fusion_attention
    mod.npu_rms_norm = npu_rms_norm
    mod.npu_rotary_mul = npu_rotary_mul
    mod.npu_swiglu = npu_swiglu
    seeds = []
    mod.npu = types.SimpleNamespace(
        is_available=lambda: devices > 0, device_count=lambda: devices,
        get_device_name=lambda i=0: "Ascend910B2", manual_seed_all=seeds.append, seeds=seeds)
    return mod
