"""Cluster-correct collectives and world sizes.

- 4 processes on a stand-in for NCCL (a collective registered for a non-CPU device type only,
  tests/train/_world_worker.py): the trainer's collectives (run-directory broadcast, SFT token
  counts, FSDP2, checkpoint RNG gathering, GRPO counts, rollout metrics, per-prompt records,
  replay quantities) all work, and a multi-mini-batch GRPO step and 2 SFT steps give one
  process's numbers on the same global batches. Before the process group served CPU tensors
  the first broadcast raised "No backend type associated with device type cpu".
- 3 processes under torchrun with a batch 3 ranks cannot split: every rank stops at start-up
  with the same one-line error, exit 2, before anything is written (it used to hang).
- check_world_size's rules, in process.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aster.config import load_config
from aster.train.world import WorldSizeError, check_world_size
from tests.train.ranks import free_port

ROOT = Path(__file__).parents[2]



@pytest.fixture(scope="module")
def four_ranks(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("world4")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_world_worker.py")),
                           str(free_port()), str(out), str(tiny_model_dir), "4"],
                          timeout=300, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _load(run: Path) -> tuple[dict, dict]:
    return json.loads((run / "result.json").read_text()), torch.load(run / "weights.pt")


def test_four_ranks_on_a_device_only_collective_match_one_process(four_ranks):
    ref, w1 = _load(four_ranks / "reference")
    got, w4 = _load(four_ranks / "ranks")
    assert len(ref["sft_loss"]) == 2
    assert got["sft_loss"] == pytest.approx(ref["sft_loss"], rel=1e-5)
    assert got["sft_grad_norm"] == pytest.approx(ref["sft_grad_norm"], rel=1e-5)
    # the GRPO step: 2 mini batches (2 optimizer steps), 1 prompt per rank in each; the second
    # mini batch starts from the first update, whose eps-sensitive elements (below) move its
    # gradient norm by ~2e-5 relative (measured) and its approx_kl, a quantity of the updated
    # policy too, by 1.3e-5 (measured with the 2026-12-08 tiny default's init): both get the
    # post-update tolerance, 1e-4
    for key, rel in (("loss", 1e-5), ("grad_norm", 1e-4), ("approx_kl", 1e-4)):
        assert got["rl"][key] == pytest.approx(ref["rl"][key], rel=rel), key
    for key in ("clip_frac_upper", "clip_frac_lower", "reward_mean", "tool_calls_mean",
                "response_len_mean", "trajectories"):
        assert got["rl"][key] == pytest.approx(ref["rl"][key], rel=1e-12), key
    assert ref["rl"]["clip_frac_upper"] > 0  # the second mini batch sees the first's update
    assert got["rl"]["rollout_spread_s"] == pytest.approx(0.3)  # ranks 0..3 "took" 0.1 s more
    assert "rollout_spread_s" not in ref["rl"]  # one process waits for nobody
    assert got["old_logp_sum"] == pytest.approx(ref["old_logp_sum"], rel=1e-6)
    assert got["trained_tokens"] == ref["trained_tokens"]
    assert got["records"] == ref["records"] == list(range(8))  # every rank's records, gathered
    for stage in ("sft", "rl"):
        diff = torch.cat([(w1[stage][k] - w4[stage][k]).abs().flatten() for k in w1[stage]])
        # lr 1e-2 moves the weights by ~2e-2; AdamW's first steps move an element whose
        # gradient is near its eps by an amount set by the gradient's last bits, which the
        # 4-way reduction order changes (measured: 9 of 557,824 elements beyond 1e-4)
        assert diff.max().item() < 1e-3, stage
        assert diff.mean().item() < 1e-6, stage


def test_ranks_wrote_one_run_directory(four_ranks):
    run = four_ranks / "ranks"
    assert sorted(p.name for p in (run / "checkpoints" / "sft").iterdir()) == ["step-00000002"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # rank 0 alone wrote them


def test_three_ranks_refuse_an_uneven_batch_in_one_line(tmp_path):
    """`torchrun --nproc_per_node 3 aster rl` with 4 prompts per step: each rank prints the
    same single line and exits 2 at start-up; nothing is written, nothing hangs."""
    aster = shutil.which("aster") or str(Path(sys.executable).with_name("aster"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3",
         "--master_port", str(free_port()), aster, "rl", "--device", "cpu", "-o", str(out),
         "rl.prompts_per_step=4", "rl.mini_batch_prompts=2"],
        timeout=120, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    # torchrun stops the other ranks once the first one exits, so 1 to 3 ranks get to print
    errors = [line for line in proc.stderr.splitlines() if line.startswith("aster: error:")]
    assert 1 <= len(errors) <= 3 and len(set(errors)) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("aster: error: rl.prompts_per_step=4 does not split evenly "
                                "over 3 ranks")
    assert re.search(r"exitcode\s*: 2 ", proc.stderr), proc.stderr[-3000:]  # the root cause
    assert not out.exists()


@pytest.mark.parametrize("overrides,world,bad", [
    (["rl.prompts_per_step=8", "rl.mini_batch_prompts=1"], 8, "rl.mini_batch_prompts=1"),
    (["run.stages=[rl_stage1]", "rl.prompts_per_step=128", "rl.mini_batch_prompts=64"], 3,
     "rl.prompts_per_step=128"),
    (["sft.global_batch_size=12"], 8, "sft.global_batch_size=12"),
])
def test_world_size_must_split_every_batch(overrides, world, bad):
    cfg = load_config(None, overrides)
    with pytest.raises(WorldSizeError, match=f"^{bad} does not split evenly over {world} ranks"):
        check_world_size(cfg, world)


def test_world_sizes_that_split_and_stages_not_run_pass():
    check_world_size(load_config(None, ["rl.prompts_per_step=8", "rl.mini_batch_prompts=4"]), 4)
    # an SFT-only run does not care about the RL batch, nor an RL-only run about SFT's
    check_world_size(load_config(None, ["run.stages=[sft]", "rl.prompts_per_step=6",
                                        "rl.mini_batch_prompts=3", "sft.global_batch_size=8"]),
                     4)
    check_world_size(load_config(None, ["run.stages=[rl_stage1]",
                                        "sft.global_batch_size=6"]), 4)
    check_world_size(load_config(None, ["sft.global_batch_size=7"]), 1)
