"""The Ascend backend's glue, checked against a plain-torch stand-in for torch_npu."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from aster.backend import select_backend
from aster.backends.ascend.attention import actual_seq_len, varlen_causal_attention
from aster.errors import CapabilityError


def test_backend_builds_on_the_standin(standin_npu):
    be = select_backend("npu")
    assert (be.name, be.device_type, be.dist_backend) == ("npu", "npu", "hccl")
    assert be.kernel_impl == "chunked"  # triton tiles overflow the 910B unified buffer
    assert be.attn_implementation() == "flash_attention_2"  # routed to npu_fusion_attention
    assert be.capabilities.fused_model_ops
    assert be.peak_flops() == pytest.approx(376e12)


def test_engine_falls_back_to_hf_without_vllm_ascend_but_explicit_vllm_errors(standin_npu):
    assert select_backend("npu").engine == "hf"
    with pytest.raises(CapabilityError, match="vllm-ascend"):
        select_backend("npu", engine="vllm")
    with pytest.raises(CapabilityError, match="triton-ascend"):
        select_backend("npu", kernel_impl="triton")


def _vllm_ascend(monkeypatch, **kw):
    from aster.backends.ascend import probes
    from tests.backends import standin_vllm_ascend

    for name, module in standin_vllm_ascend.modules(**kw).items():
        monkeypatch.setitem(sys.modules, name, module)
    probes.clear_cache()


def test_vllm_ascend_release_gets_nz_off_and_no_rl_config_it_would_ignore(standin_npu,
                                                                          monkeypatch):
    # Every released vllm-ascend (0.11 .. 0.25.1rc1) ignores additional_config.rl_config; what
    # makes in-place weight pushes land in the layout the kernels read is NZ off.
    _vllm_ascend(monkeypatch)
    be = select_backend("npu")
    assert be.engine == "vllm" and be.capabilities.vllm and be.capabilities.sleep_mode
    opts = be.engine_options()
    assert opts["enable_sleep_mode"] is True and opts["enforce_eager"] is True
    assert "additional_config" not in opts
    assert be.engine_env() == {"VLLM_ASCEND_ENABLE_NZ": "0"}


def test_vllm_ascend_that_reads_rl_config_gets_rl_mode(standin_npu, monkeypatch):
    _vllm_ascend(monkeypatch, rl_config=True)
    opts = select_backend("npu").engine_options()
    assert opts["additional_config"] == {"rl_config": {"enabled": True}}


def test_broken_vllm_ascend_falls_back_to_hf_with_the_reason(standin_npu, monkeypatch,
                                                             caplog):
    _vllm_ascend(monkeypatch, broken=True)
    with caplog.at_level("INFO", logger="aster"):
        be = select_backend("npu")
    assert be.engine == "hf" and not be.capabilities.vllm
    assert "vllm-ascend is installed but its probe failed (" in caplog.text
    with pytest.raises(CapabilityError, match="probe failed"):
        select_backend("npu", engine="vllm")


def test_triton_ascend_is_found_as_triton_backends_ascend(standin_npu, monkeypatch):
    # The triton-ascend wheel installs `triton` with an `ascend` backend; no `triton_ascend`.
    import importlib.machinery
    import types

    from aster.backends.ascend import probes

    backend = types.ModuleType("triton.backends.ascend")
    backend.__spec__ = importlib.machinery.ModuleSpec("triton.backends.ascend", None)
    monkeypatch.setitem(sys.modules, "triton.backends.ascend", backend)
    probes.clear_cache()
    assert select_backend("npu", kernel_impl="triton").kernel_impl == "triton"


def test_determinism_env_is_applied(standin_npu, monkeypatch):
    for key in ("HCCL_DETERMINISTIC", "CLOSE_MATMUL_K_SHIFT", "ATB_MATMUL_SHUFFLE_K_ENABLE"):
        monkeypatch.delenv(key, raising=False)
    be = select_backend("npu")
    be.set_deterministic(seed=7)
    try:
        assert os.environ["HCCL_DETERMINISTIC"] == "true"
        assert os.environ["CLOSE_MATMUL_K_SHIFT"] == "1"
        assert os.environ["ATB_MATMUL_SHUFFLE_K_ENABLE"] == "0"
        assert standin_npu.npu.seeds == [7]
    finally:
        torch.use_deterministic_algorithms(False)


def test_cu_seqlens_become_cumulative_actual_seq_len():
    assert actual_seq_len(torch.tensor([0, 3, 7, 12])) == [3, 7, 12]
    assert actual_seq_len([0, 5]) == [5]
    with pytest.raises(ValueError, match="non-decreasing"):
        actual_seq_len([0, 5, 2])
    with pytest.raises(ValueError, match="start at 0"):
        actual_seq_len([1, 5])


@pytest.mark.parametrize("nq,nkv", [(4, 4), (4, 2)])
def test_packed_attention_matches_per_sequence_causal_attention(standin_npu, nq, nkv):
    torch.manual_seed(0)
    lengths, d = [3, 7, 1, 5], 32
    total = sum(lengths)
    q, k, v = (torch.randn(total, n, d) for n in (nq, nkv, nkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    out = varlen_causal_attention(standin_npu, q, k, v, cu)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        rep = nq // nkv
        ref = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1), k[start:end].transpose(0, 1).repeat_interleave(rep, 0),
            v[start:end].transpose(0, 1).repeat_interleave(rep, 0), is_causal=True)
        torch.testing.assert_close(out[start:end], ref.transpose(0, 1))
    with pytest.raises(ValueError, match="cu_seqlens ends at"):
        varlen_causal_attention(standin_npu, q, k, v, cu[:-1])


def test_fused_qwen3_ops_keep_the_model_numerics(standin_npu, monkeypatch):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.models.qwen3 import modeling_qwen3

    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)
    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, intermediate_size=96, vocab_size=97)
    model = Qwen3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    be = select_backend("npu")
    be.prepare_model(model, fused_ops=True)
    assert modeling_qwen3.apply_rotary_pos_emb.__module__ == "aster.backends.ascend.fused_ops"
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
