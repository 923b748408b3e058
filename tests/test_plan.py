"""`aster plan`: the per-device memory plan of a run's phases, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from aster.cli import main
from aster.config import load_config
from aster.plan import (
    KNOWN_SHAPES,
    GiB,
    activations,
    build_plan,
    model_shape,
    problem,
    push_transient,
)

PHASES = ("sft update", "rl update", "push", "rollout stage1", "rollout stage2", "eval")


def _real_param_count(shape) -> int:
    """Parameters of the real transformers Qwen3 model of `shape`, built on the meta device."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                      vocab_size=shape.vocab, tie_word_embeddings=shape.tied)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_known_shapes_count_the_parameters_of_the_real_model(name):
    shape = KNOWN_SHAPES[name]
    assert shape.params == _real_param_count(shape)
    assert f"{shape.params / 1e9:.2f}" == {"qwen3-4b": "4.02", "qwen3-1.7b": "1.72"}[name]


def test_qwen3_4b_on_8_h100s_prints_every_phase_and_fits(capsys):
    assert main(["plan", "--config", "qwen3-4b", "--gpus", "8", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "Qwen3-4B: 4.02B parameters" in out and "strategy fsdp2" in out
    header = next(line for line in out.splitlines() if line.startswith("GiB per device"))
    assert all(phase in header for phase in PHASES)
    rows = {line[:32].strip(): line[32:].split() for line in out.splitlines()[3:]
            if line[:32].strip()}
    # 4 bytes x 4.02B / 8 ranks; AdamW twice that; grads only while updating
    assert rows["trainer fp32 weights"] == ["1.87"] * 6
    assert rows["trainer AdamW moments"] == ["3.75"] * 6
    assert rows["trainer fp32 grads"] == ["1.87", "1.87", "-", "-", "-", "-"]
    assert rows["fits"] == ["yes"] * 6
    assert "concurrent sequences at the full 32,768 tokens" in out  # stage 2: 2048 + 30720
    assert "without gradient checkpointing the activations would be" in out


def test_kv_cache_and_utilisation_follow_the_engine_budget():
    cfg = load_config("qwen3-4b", ["rollout.gpu_memory_utilization=0.85"])
    plan = build_plan(cfg, 8, 80)
    rollout = next(p for p in plan.phases if p.name == "rollout stage2")
    shape = KNOWN_SHAPES["qwen3-4b"]
    kv = 0.85 * 80 * GiB - 2 * shape.params - rollout.terms["engine workspace"]
    assert rollout.terms["engine KV cache"] == pytest.approx(kv)
    assert rollout.kv_tokens == int(kv // (2 * 36 * 8 * 128 * 2))  # K and V, bf16
    assert rollout.total <= plan.device_bytes and problem(plan) is None
    # the most the engine may take: all but the trainer's resident shards and the reserve
    resident = 12 * shape.params / 8
    assert plan.max_utilization == pytest.approx((80 * GiB - resident - 2 * GiB) / (80 * GiB),
                                                 abs=0.01)


def test_checkpointing_holds_layer_inputs_instead_of_every_activation():
    shape = KNOWN_SHAPES["qwen3-4b"]
    with_ckpt, without = (activations(shape, 65536, 2, c) for c in (True, False))
    assert with_ckpt >= 36 * 65536 * 2560 * 2  # at least every layer's bf16 input
    assert without > 10 * with_ckpt


def test_push_transient_is_one_bucket_and_the_largest_tensor():
    shape = KNOWN_SHAPES["qwen3-4b"]
    largest = 151936 * 2560  # the (tied) embedding
    assert push_transient(shape, 512 * 2**20, 2) == 512 * 2**20 + 6 * largest


@pytest.mark.parametrize("args, key", [
    (["--gpus", "8", "rollout.gpu_memory_utilization=0.97"], "rollout.gpu_memory_utilization"),
    (["--gpus", "1"], "sft.cutoff_len"),
    (["--gpus", "8", "model.gradient_checkpointing=false"], "model.gradient_checkpointing"),
    (["--gpus", "8", "distributed.strategy=ddp"], "distributed.strategy"),
    (["--gpus", "8", "rollout.enable_sleep_mode=false"], "rollout.enable_sleep_mode"),
    (["--gpus", "8", "rollout.gpu_memory_utilization=0.1"], "raise rollout.gpu_memory_utilization"),
])
def test_a_phase_that_does_not_fit_is_one_line_naming_the_key(capsys, args, key):
    assert main(["plan", "--config", "qwen3-4b", "--gpu-memory-gb", "80", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aster: error: ") and key in err and "\n" not in err


def test_shapes_come_from_a_local_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 1000,
        "tie_word_embeddings": False}))
    shape = model_shape(load_config(None, [f"model.path={tmp_path}"]).model)
    assert shape.source == str(tmp_path / "config.json")
    assert shape.params == _real_param_count(shape)


def test_an_unknown_hub_model_is_one_line(capsys):
    assert main(["plan", "model.path=someone/unknown-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no local config.json" in err and "\n" not in err
