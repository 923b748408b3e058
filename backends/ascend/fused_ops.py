"""Optional fused Qwen3 ops on Ascend (model.fused_ops=true): npu_rms_norm, npu_rotary_mul,
npu_swiglu. They replace the forward of RMSNorm and MLP modules of one model instance and
transformers' Qwen3 rotary helper; numerics match the eager ops within bf16 rounding."""

from __future__ import annotations

import types

import torch


def _rms_norm_forward(torch_npu):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.to(self.weight.dtype)
        return torch_npu.npu_rms_norm(x, self.weight, epsilon=self.variance_epsilon)[0]
    return forward


def _swiglu_mlp_forward(torch_npu):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # npu_swiglu(cat[a, b]) = silu(a) * b, the Qwen3 MLP's act(gate(x)) * up(x)
        gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
        return self.down_proj(torch_npu.npu_swiglu(gate_up, dim=-1))
    return forward


def _rotary(torch_npu):
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return torch_npu.npu_rotary_mul(q, cos, sin), torch_npu.npu_rotary_mul(k, cos, sin)
    return apply_rotary_pos_emb


def apply_fused_qwen3_ops(model: torch.nn.Module, torch_npu) -> dict[str, int]:
    """Swap in the fused ops; returns how many modules of each kind were replaced."""
    from transformers.models.qwen3 import modeling_qwen3

    counts = {"rms_norm": 0, "swiglu": 0, "rotary": 0}
    for module in model.modules():
        if isinstance(module, modeling_qwen3.Qwen3RMSNorm):
            module.forward = types.MethodType(_rms_norm_forward(torch_npu), module)
            counts["rms_norm"] += 1
        elif isinstance(module, modeling_qwen3.Qwen3MLP) and module.config.hidden_act == "silu":
            module.forward = types.MethodType(_swiglu_mlp_forward(torch_npu), module)
            counts["swiglu"] += 1
    if counts["rms_norm"] or counts["swiglu"]:
        # The rotary helper is a module-level function in transformers; the attention forward
        # looks it up at call time, so replacing it affects Qwen3 models in this process only.
        modeling_qwen3.apply_rotary_pos_emb = _rotary(torch_npu)
        counts["rotary"] = 1
    return counts
