"""Balanced ranks: a GRPO step on 3 gloo processes (FSDP2) whose ranks generated very uneven
token counts (426, 424 and 46 tokens) trains the same as one process, with every rank's
forwards over about the same number of tokens and every rank running the same number of micro
batches, a rank with fewer trajectories filling up with empty ones (so FSDP2's gathers and
reduce-scatters pair up: a mismatch would fail the 120 s collective timeout, not pass).

The runner forks the ranks after one import (tests/train/_balance_worker.py): ~15 s.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train._dist_worker import max_abs_diff
from tests.train.ranks import free_port

ROOT = Path(__file__).parents[2]
PASSES = 3  # the old log-probs, then 2 PPO epochs over the one mini batch



@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("balance")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_balance_worker.py")),
                           str(free_port()), str(out), str(tiny_model_dir)],
                          timeout=300, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_uneven_ranks_train_as_one_process(runs, tiny_model_dir):
    ref = json.loads((runs / "reference" / "result.json").read_text())
    got = json.loads((runs / "ranks" / "result.json").read_text())
    assert ref["clip_frac_upper"] + ref["clip_frac_lower"] > 0  # the 2nd epoch clips
    for key in ("loss", "grad_norm", "approx_kl", "ratio_max", "entropy"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    for key in ("clip_frac_upper", "clip_frac_lower"):
        assert got[key] == pytest.approx(ref[key], rel=1e-6), key
    w1 = torch.load(runs / "reference" / "weights.pt")
    w3 = torch.load(runs / "ranks" / "weights.pt")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_abs_diff(w1, base, rename=lambda k: k.removeprefix("model.")) > 1e-2  # moved
    assert max_abs_diff(w1, w3) < 1e-4


def test_ranks_process_balanced_tokens_in_equal_micro_batch_counts(runs):
    ranks = [json.loads((runs / "ranks" / f"rank{r}.json").read_text()) for r in range(3)]
    generated = [r["generated_tokens"] for r in ranks]
    trained = [r["tokens"] / PASSES for r in ranks]
    assert sum(trained) == sum(generated) == 896
    mean = sum(generated) / 3
    assert max(generated) / mean > 1.4  # where the rollouts left them
    assert max(trained) / mean < 1.05  # where the plan trained them
    got = json.loads((runs / "ranks" / "result.json").read_text())
    assert got["rank_token_imbalance"] == pytest.approx(max(trained) / mean)
    assert sum(r["trajectories"] for r in ranks) == 12 * PASSES
    assert len({r["forwards"] for r in ranks}) == 1  # the collectives paired up
    # the rank with the 300-token trajectory alone runs empty micro batches to keep the count
    assert any(r["empty"] > 0 for r in ranks)
    assert all(r["forwards"] == PASSES * got["micro_batches"] for r in ranks)
