"""Engine sampled-token log-probs vs the trainer's recomputation (aster.kernels.token_logprobs
on a transformers forward), before and after an in-place weight update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from aster.errors import CapabilityError
from aster.rollout import HFEngine
from aster.rollout.engine import SamplingParams
from tests.rollout.agreement import agreement, perturb, prompts_for

# fp32 on CPU: both sides run the same math in different kernels / batch shapes.
MEAN_TOL, MAX_TOL = 1e-5, 1e-4
REPO = Path(__file__).resolve().parents[2]


def test_hf_engine_agreement_and_weight_update(tiny_dir, tokenizer, one_thread):
    engine = HFEngine(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float32").eval()
    prompts = prompts_for(tokenizer)
    for temperature in (1.0, 0.7):
        res = agreement(engine, model, prompts, temperature=temperature)
        print(f"hf T={temperature}: {res}")
        assert res["mean_abs_diff"] < MEAN_TOL and res["max_abs_diff"] < MAX_TOL
    stale = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float32").eval()
    perturb(model)
    engine.load_weights(model.state_dict())
    after = agreement(engine, model, prompts)
    old = agreement(engine, stale, prompts)
    print(f"hf after update: {after}; vs old weights: {old}")
    assert after["mean_abs_diff"] < MEAN_TOL and after["max_abs_diff"] < MAX_TOL
    assert old["mean_abs_diff"] > 1e-3  # the update really changed the engine's weights


def test_hf_engine_sampling_contract(tiny_dir, tokenizer, one_thread):
    engine = HFEngine(tiny_dir)
    prompts = prompts_for(tokenizer)
    stop = tokenizer.convert_tokens_to_ids("\n")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, stop_token_ids=[stop])
    a, b = engine.generate(prompts, params), engine.generate(prompts, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]  # per-request seeds
    for out in a:
        assert len(out.token_ids) <= 12
        assert (out.finish_reason == "stop") == (out.token_ids[-1] == stop)
        assert stop not in out.token_ids[:-1]
    greedy = engine.generate(prompts[:1], SamplingParams(max_new_tokens=8, temperature=0))
    single = engine.generate(prompts[:1] * 3, SamplingParams(max_new_tokens=8, temperature=0))
    assert all(o.token_ids == greedy[0].token_ids for o in single)  # padding does not leak
    top = engine.generate(prompts, SamplingParams(max_new_tokens=8, top_p=0.5, top_k=20, seed=1))
    assert all(lp <= 1e-6 for o in top for lp in o.logprobs)
    assert not engine.supports_sleep
    with pytest.raises(CapabilityError):
        engine.sleep()


@pytest.mark.vllm
def test_vllm_cpu_agreement_and_weight_update(tmp_path):
    pytest.importorskip("vllm")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.rollout.vllm_agreement_main",
                           str(tmp_path / "tiny")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AGREEMENT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("AGREEMENT "):])
    print(f"vllm-cpu: {res}")
    for key in ("before", "temp_0.7", "after"):
        assert res[key]["mean_abs_diff"] < MEAN_TOL and res[key]["max_abs_diff"] < MAX_TOL, key
    assert res["after_vs_old_weights"]["mean_abs_diff"] > 1e-3
