"""`aster train` end to end: a shrunken tiny run in seconds, and the full default (slow)."""

import json

import pytest

from aster.cli import main
from aster.metrics import read_metrics
from tests.train.small import SMALL

# 32 SFT steps instead of SMALL's 2: enough for the loss to show that SFT learns
LEARNING = [*SMALL, "data.synthetic.num_sft=64", "data.synthetic.samples_per_problem=4",
            "sft.global_batch_size=8", "sft.micro_batch_size=8"]


def test_aster_train_small_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--device", "cpu", "-o", str(run), *LEARNING]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"sft", "rl_stage1", "rl_stage2"}
    for entry in summary.values():
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["tool_calls_mean"] >= 0.0
    # quality: SFT fits its trajectories (6.9 -> 0.5 measured; a broken label mask, learning
    # rate or optimizer leaves it near the first step's ~ln(1024))
    sft_loss = [r["loss"] for r in read_metrics(run) if r["stage"] == "sft"]
    assert len(sft_loss) == 32 and sft_loss[-1] < 0.25 * sft_loss[0], sft_loss
    stages = [r["stage"] for r in read_metrics(run)]
    assert stages.count("rl_stage1") == 2 and stages.count("rl_stage2") == 1
    assert (run / "rollouts" / "stage2_prompts.json").is_file()
    assert (run / "rl_stage2" / "model" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "rl_stage2" in out and "accuracy" in out
    # finished stages are skipped on --resume; plot draws the curves
    assert main(["train", "--resume", "-o", str(run), *LEARNING]) == 0
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "reward_mean.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [[], ["run.seed=3", "data.synthetic.seed=1"]],
                         ids=["default", "model3-data1"])
def test_aster_train_default_meets_targets(tmp_path, seeds):
    """The embedded default, at its own seeds and at one other point of bench/tiny_robustness.py's
    grid: accuracy after RL >= 20 points above after SFT, stage 2 keeps stage 1's accuracy
    (within 2 points), tool calls kept (>= 80% of after SFT after each RL stage)."""
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), *seeds]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["rl_stage2"]["accuracy"] >= s["sft"]["accuracy"] + 0.20, s
    assert s["rl_stage2"]["accuracy"] >= s["rl_stage1"]["accuracy"] - 0.02, s
    for stage in ("rl_stage1", "rl_stage2"):
        assert s[stage]["tool_calls_mean"] >= 0.8 * s["sft"]["tool_calls_mean"], s
