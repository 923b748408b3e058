"""distributed.strategy=deepspeed: the engine config aster generates (pure, no DeepSpeed needed)
and the one-line errors for what it cannot do."""

import json

import pytest
import torch

from aster.config import load_config
from aster.errors import AsterUserError, CapabilityError, ConfigError
from aster.train.strategy.deepspeed import deepspeed_config


def _dist(*overrides):
    return load_config(None, ["distributed.strategy=deepspeed", *overrides]).distributed


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_config_follows_aster_keys(stage):
    cfg = deepspeed_config(_dist(f"distributed.zero_stage={stage}"), world_size=4,
                           max_grad_norm=0.5, dtype=torch.bfloat16)
    assert cfg["zero_optimization"] == {"stage": stage}
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": True}
    # aster accumulates its own micro batches: the engine sees one per step, no GAS scaling
    assert cfg["train_batch_size"] == 4 and cfg["gradient_accumulation_steps"] == 1
    assert "optimizer" not in cfg and "scheduler" not in cfg  # aster's AdamW and schedule


def test_cpu_offload_and_fp32():
    cfg = deepspeed_config(_dist("distributed.zero_stage=3", "distributed.cpu_offload=true"),
                           world_size=2, max_grad_norm=1.0, dtype=torch.float32)
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu"}
    assert zero["offload_param"] == {"device": "cpu"}
    assert cfg["bf16"] == {"enabled": False} and cfg["zero_force_ds_cpu_optimizer"] is False


def test_user_json_merges_and_owned_keys_are_refused(tmp_path):
    extra = tmp_path / "ds.json"
    extra.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000},
                                 "communication_data_type": "fp32"}))
    cfg = deepspeed_config(_dist("distributed.zero_stage=2", f"distributed.deepspeed_config={extra}"),
                           world_size=2, max_grad_norm=1.0, dtype=torch.float32)
    assert cfg["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert cfg["communication_data_type"] == "fp32"
    extra.write_text(json.dumps({"gradient_clipping": 3.0, "optimizer": {"type": "Adam"}}))
    with pytest.raises(AsterUserError, match="gradient_clipping, optimizer"):
        deepspeed_config(_dist(f"distributed.deepspeed_config={extra}"), world_size=1,
                         max_grad_norm=1.0, dtype=torch.float32)
    extra.write_text("{not json")
    with pytest.raises(AsterUserError, match="cannot read a JSON"):
        deepspeed_config(_dist(f"distributed.deepspeed_config={extra}"), world_size=1,
                         max_grad_norm=1.0, dtype=torch.float32)


def test_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="distributed.zero_stage=4"):
        _dist("distributed.zero_stage=4")
    with pytest.raises(CapabilityError, match="float16"):
        deepspeed_config(_dist(), world_size=1, max_grad_norm=1.0, dtype=torch.float16)
