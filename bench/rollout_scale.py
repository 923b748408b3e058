"""Rollout scale harness: one rank's RL rollout at the paper's shapes, new scheduling vs the
per-turn barrier, through the real AgentLoop and the real SandboxPool on a stand-in engine.

    python bench/rollout_scale.py                    # stage 1 and stage 2, 128 trajectories
    python bench/rollout_scale.py --stages 2 --scale 30 --max-concurrency 24
    python bench/rollout_scale.py --quick            # stage-2 shape, 32 trajectories, < 1 min

The engine is aster.rollout.sim_engine.SimEngine: vLLM 0.32's v1 scheduling rules (KV-block
budget, FCFS running/waiting queues, preemption by recompute, max_num_seqs, chunked prefill
under max_num_batched_tokens, prefix-cache hits and LRU eviction of freed blocks) and a
roofline step time for Qwen3-4B bf16 on one H100 SXM (aster/rollout/sim_kv.py says where each
number comes from). What it samples is scripted: each turn is a drawn number of filler tokens
and a valid code_interpreter call, until the trajectory's drawn number of calls, then a boxed
answer. The calls run in real sandbox sessions and sleep their drawn duration divided by the
time scale; the engine waits out its step times divided by the same factor. Every time below
is model time (wall seconds x scale).

Both modes drive the same engine: `new` sends each turn on its own (AgentLoop's RequestStream:
a turn joins the running batch when its tool output is in); `barrier` is the TurnBatcher (one
generate() per gathered batch of turns, returning when its longest request is done). Figures:
- rollout: wall time of the whole rollout;
- ideal: a lower bound, the larger of (a) the decode work at full capacity: the steps needed
  if every step ran max_num_seqs sequences or a full KV cache, each reading the weights once,
  plus every decoded token's KV read (memory side), or all FLOPs of decoding and of prefilling
  each token once (compute side), and (b) the longest trajectory's chain: its decode steps run
  alone, its own prefills, and its tools' drawn durations;
- decode-slot utilisation: the time average of the engine's capacity in use: the larger of
  running sequences / max_num_seqs and KV blocks held by running sequences / all KV blocks
  (idle time counts as 0);
- tool time hidden: the fraction of sandbox-call time during which the engine was stepping;
- re-prefilled tokens: prompt tokens prefilled again although the engine had computed them
  before (their blocks were evicted): prefix-cache misses; recomputed tokens: the same after a
  preemption.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from aster.rollout.sim_engine import SimEngine
from aster.rollout.sim_kv import StepModel

# vLLM 0.32 defaults for the LLM class on a >= 70 GiB GPU that is not an A100
# (vllm/engine/arg_utils.py, get_batch_defaults): max_num_seqs 1024, batched tokens 16384.
MAX_NUM_SEQS = 1024
MAX_BATCHED_TOKENS = 16384
BLOCK = 16
# rollout.gpu_memory_utilization 0.6 of an 80 GB H100 less weights and activations: about
# 35-37.5 GiB of KV (issue 22); 36 GiB / 147,456 bytes per token = 262,144 tokens
KV_TOKENS = 36 * 2**30 // StepModel().kv_bytes_per_token
PROMPT_BUDGET = 2048
# The engine thread must get the GIL back promptly when a step's wait ends: at the default
# 5 ms switch interval a busy event loop delays it by up to 5 ms x scale of model time.
SWITCH_S = 2e-4
LAG_WARN = 0.02  # a run whose engine fell further behind than this share of it is suspect


@dataclass(frozen=True)
class Shape:
    """One RL stage's rollout on one rank (DESIGN.md: 128 prompts x G=8 over 8 ranks)."""

    name: str
    max_response_tokens: int
    turn_median: float  # sampled tokens per assistant turn: log-normal
    turn_sigma: float = 0.8
    calls_median: float = 13.0  # tool calls per trajectory: log-normal, mean ~15.6
    calls_sigma: float = 0.6
    max_calls: int = 50
    tool_median_s: float = 0.6  # model seconds per call: log-normal (90%: 0.19-1.9 s)
    tool_sigma: float = 0.7
    output_median: float = 60.0  # characters printed per call: log-normal
    output_sigma: float = 0.8


SHAPES = {"1": Shape("stage1", 16384, turn_median=350.0),
          "2": Shape("stage2", 30720, turn_median=650.0)}


@dataclass
class Plan:
    """What one trajectory will do: calls, per-turn sampled lengths, tool durations/outputs."""

    turns: list[int]
    tool_s: list[float]
    output_chars: list[int]
    seed: int


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def draw_plans(shape: Shape, n: int, seed: int = 0) -> list[Plan]:
    rng = random.Random(seed)
    plans = []
    for i in range(n):
        calls = min(shape.max_calls, max(1, round(_lognormal(rng, shape.calls_median,
                                                              shape.calls_sigma))))
        turns = [max(80, round(_lognormal(rng, shape.turn_median, shape.turn_sigma)))
                 for _ in range(calls + 1)]
        tool_s = [min(20.0, max(0.05, _lognormal(rng, shape.tool_median_s, shape.tool_sigma)))
                  for _ in range(calls)]
        out = [min(1500, max(1, round(_lognormal(rng, shape.output_median,
                                                 shape.output_sigma)))) for _ in range(calls)]
        plans.append(Plan(turns, tool_s, out, seed * 100_003 + i))
    return plans


class TurnScript:
    """The stand-in model: prompt ids -> the turn's ids under the tokenizer's chat format.

    A trajectory is recognised by the first filler tokens of its last turn (random per
    trajectory, so unique), which its next prompt carries at a known offset; a prompt that
    carries none is a new trajectory and takes the next plan."""

    KEY = 16

    def __init__(self, tokenizer, plans: list[Plan], scale: float, opens_think: bool):
        self.tok, self.plans, self.scale = tokenizer, plans, scale
        self.eos = tokenizer.eos_token_id
        self.head = [] if opens_think else self._enc("<think>\n")
        self.filler = self._filler_ids()
        self._next = 0
        self._pending: dict[int, tuple[int, tuple[int, ...]]] = {}  # plan -> (offset, key)
        self._turn: dict[int, int] = {}
        self._rngs: dict[int, random.Random] = {}
        self._lock = threading.Lock()

    def _enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _filler_ids(self) -> list[int]:
        """Vocabulary ids that decode to plain letters (nothing the parser reads)."""
        ids = []
        for i in range(len(self.tok)):
            text = self.tok.decode([i])
            if text.strip().isalpha() and text.isascii():
                ids.append(i)
        if len(ids) < 32:
            raise ValueError("the tokenizer has too few plain-word tokens for the scripted turns")
        return ids

    def _which(self, prompt: list[int]) -> int:
        for plan, (offset, key) in self._pending.items():
            if len(prompt) > offset + self.KEY and tuple(prompt[offset:offset + self.KEY]) == key:
                return plan
        plan, self._next = self._next, self._next + 1
        if plan >= len(self.plans):
            raise ValueError(f"more trajectories than the {len(self.plans)} plans drawn")
        self._turn[plan] = 0
        self._rngs[plan] = random.Random(self.plans[plan].seed)
        return plan

    def tail_text(self, plan: Plan, turn: int) -> str:
        if turn >= len(plan.tool_s):
            return "\n</think>\n\nThe answer is \\boxed{7}."
        code = (f"import time\ntime.sleep({plan.tool_s[turn] / self.scale:.6f})\n"
                f"print(''.join(str((i * 7) % 10) for i in range({plan.output_chars[turn]})))")
        call = {"name": "code_interpreter", "arguments": {"code": code}}
        return "\n</think>\n\n<tool_call>\n" + json.dumps(call) + "\n</tool_call>"

    def __call__(self, prompt: list[int]) -> list[int]:
        with self._lock:
            index = self._which(prompt)
            plan, turn, rng = self.plans[index], self._turn[index], self._rngs[index]
            self._turn[index] = turn + 1
            tail = self._enc(self.tail_text(plan, min(turn, len(plan.tool_s))))
            n = max(self.KEY, plan.turns[min(turn, len(plan.turns) - 1)]
                    - len(self.head) - len(tail) - 1)
            filler = [rng.choice(self.filler) for _ in range(n)]
            self._pending[index] = (len(prompt) + len(self.head),
                                    tuple(filler[:self.KEY]))
            return self.head + filler + tail + [self.eos]


class TimedPool:
    """The real SandboxPool, with every call's wall-clock span recorded."""

    def __init__(self, pool):
        self.pool = pool
        self.spans: list[tuple[float, float]] = []

    @contextlib.asynccontextmanager
    async def asession(self):
        async with self.pool.asession() as session:
            yield _TimedSession(session, self.spans)


class _TimedSession:
    def __init__(self, session, spans):
        self.session, self.spans = session, spans

    async def arun(self, code, timeout=None):
        start = time.perf_counter()
        try:
            return await self.session.arun(code, timeout=timeout)
        finally:
            self.spans.append((start, time.perf_counter()))


def overlap_fraction(spans, busy) -> float:
    """The fraction of the total length of `spans` covered by the sorted disjoint `busy`."""
    total = sum(e - s for s, e in spans)
    if total <= 0:
        return 0.0
    starts = [s for s, _ in busy]
    covered = 0.0
    for s, e in spans:
        i = max(bisect.bisect_right(starts, s) - 1, 0)
        while i < len(busy) and busy[i][0] < e:
            covered += max(0.0, min(e, busy[i][1]) - max(s, busy[i][0]))
            i += 1
    return covered / total


@dataclass
class Setup:
    shape: Shape
    trajectories: int
    scale: float
    kv_tokens: int = KV_TOKENS
    max_num_seqs: int = MAX_NUM_SEQS
    max_batched_tokens: int = MAX_BATCHED_TOKENS
    max_concurrency: int = 256  # rollout.max_concurrency (shipped default)
    kv_admission: bool = True  # rollout.kv_admission in the new mode (the barrier: old, off)
    group: int = 8
    seed: int = 0
    model: StepModel = field(default_factory=StepModel)


def _prompts(setup: Setup) -> list[dict]:
    rng = random.Random(setup.seed + 1)
    words = ["integer", "prime", "sum", "triangle", "digits", "remainder", "sequence",
             "probability", "circle", "divisible", "polynomial", "roots", "area", "count"]
    n = max(1, setup.trajectories // setup.group)
    return [{"prompt": f"Problem {i}: " + " ".join(rng.choice(words) for _ in range(60)) +
             " Find the answer.", "answer": "7"} for i in range(n)]


def ideal_s(setup: Setup, engine: SimEngine, trajs) -> tuple[float, dict]:
    """The lower bound described in the module docstring, and its parts."""
    m, s = setup.model, engine.stats
    steps = max(s["decode_tokens"] / setup.max_num_seqs, s["decode_context"] / setup.kv_tokens)
    mem = m.memory_s(s["decode_context"], steps=steps)
    once_tokens, once_pairs = 0.0, 0.0  # tokens any schedule must prefill: prompts, tool turns
    for traj in trajs[::setup.group]:
        n = len(traj.prompt_ids)
        once_tokens += n
        once_pairs += n * (n + 1) / 2
    chain = 0.0
    for traj in trajs:
        mask = np.asarray(traj.loss_mask)
        pos = len(traj.prompt_ids) + np.arange(len(mask)) + 1.0
        tool_pos = pos[mask == 0]
        once_tokens += len(tool_pos)
        once_pairs += float(tool_pos.sum())
        dec = pos[mask == 1]
        alone = np.maximum(m.memory_s(dec), m.compute_s(1, 1, dec)).sum()
        own = m.compute_s(len(traj.prompt_ids) + len(tool_pos), 0,
                          len(traj.prompt_ids) ** 2 / 2 + float(tool_pos.sum()))
        tools = traj.timing["tool_s"] * setup.scale  # measured: sandbox overhead included
        chain = max(chain, float(alone) + own + tools)
    comp = m.compute_s(s["decode_tokens"] + once_tokens, s["decode_tokens"],
                       s["decode_context"] + once_pairs)
    parts = {"memory_bound_s": mem, "compute_bound_s": comp, "chain_bound_s": chain}
    return max(mem, comp, chain), parts


def run_mode(setup: Setup, mode: str, tokenizer, sandbox) -> dict:
    """One rollout in `mode` ('new' or 'barrier'); its figures."""
    from aster.rollout import AgentLoop, RolloutConfig, chat_format

    plans = draw_plans(setup.shape, setup.trajectories, setup.seed)
    script = TurnScript(tokenizer, plans, setup.scale, chat_format(tokenizer).opens_think)
    engine = SimEngine(script, kv_tokens=setup.kv_tokens, block_size=BLOCK,
                       max_num_seqs=setup.max_num_seqs,
                       max_num_batched_tokens=setup.max_batched_tokens,
                       max_model_len=PROMPT_BUDGET + setup.shape.max_response_tokens,
                       step_model=setup.model, time_scale=setup.scale,
                       continuous=(mode == "new"))
    cfg = RolloutConfig(max_response_tokens=setup.shape.max_response_tokens,
                        max_tool_calls=setup.shape.max_calls,
                        max_concurrency=setup.max_concurrency, tool_timeout_s=60.0,
                        max_tool_output_chars=4096,
                        kv_admission=setup.kv_admission and mode == "new")
    pool = TimedPool(sandbox)
    # the TurnBatcher's 20 ms gather window is wall time: keep it 20 ms of model time
    loop = AgentLoop(engine, tokenizer, pool, cfg, gather_s=0.02 / setup.scale, seed=0)
    start = time.perf_counter()
    try:
        trajs = asyncio.run(loop.arun(_prompts(setup), setup.group))
    finally:
        engine.close()
    wall = (time.perf_counter() - start) * setup.scale
    return {**_figures(setup, mode, engine, trajs, plans, pool, wall),
            "peak_in_flight": loop.stats["peak_in_flight"]}


def _figures(setup, mode, engine, trajs, plans, pool, wall) -> dict:
    s = engine.stats
    ideal, parts = ideal_s(setup, engine, trajs)
    reasons: dict[str, int] = {}
    for t in trajs:
        reasons[t.finish_reason] = reasons.get(t.finish_reason, 0) + 1
    return {
        "mode": mode, "rollout_s": wall, "ideal_s": ideal, "vs_ideal": wall / ideal,
        "slot_util": s["capacity_s"] / wall, "tool_hidden": overlap_fraction(pool.spans,
                                                                            engine.busy),
        "reprefill_tokens": s["reprefill_tokens"], "recompute_tokens": s["recompute_tokens"],
        "prefix_hit_tokens": s["prefix_hit_tokens"], "prefill_tokens": s["prefill_tokens"],
        "decode_tokens": s["decode_tokens"], "preemptions": s["preemptions"],
        "mean_running": s["running_s"] / max(s["busy_s"], 1e-9),
        "engine_busy_s": s["busy_s"], "engine_idle_s": max(wall - s["busy_s"], 0.0),
        "engine_lag_s": s["lag_max_s"],
        "engine_cpu_s": s["engine_cpu_s"],
        "tool_calls": sum(t.num_tool_calls for t in trajs),
        "tool_model_s": sum(e - b for b, e in pool.spans) * setup.scale,
        "response_len_mean": sum(len(t.response_ids) for t in trajs) / len(trajs),
        "scored": sum(t.finish_reason == "answer" and t.reward == 1.0 for t in trajs),
        "finish": reasons, **parts}


ROWS = [("rollout time (model s)", "rollout_s", "{:.0f}"), ("ideal (model s)", "ideal_s", "{:.0f}"),
        ("rollout / ideal", "vs_ideal", "{:.2f}x"), ("decode-slot utilisation", "slot_util",
                                                    "{:.1%}"),
        ("tool time hidden behind decoding", "tool_hidden", "{:.1%}"),
        ("re-prefilled tokens (prefix-cache misses)", "reprefill_tokens", "{:,.0f}"),
        ("recomputed tokens (after preemption)", "recompute_tokens", "{:,.0f}"),
        ("prefix-cache hit tokens", "prefix_hit_tokens", "{:,.0f}"),
        ("preemptions", "preemptions", "{:,.0f}"), ("decode tokens", "decode_tokens", "{:,.0f}"),
        ("mean running sequences", "mean_running", "{:.1f}"),
        ("peak trajectories in flight", "peak_in_flight", "{:.0f}"),
        ("engine stepping (model s)", "engine_busy_s", "{:.0f}"),
        ("engine idle (model s)", "engine_idle_s", "{:.0f}"),
        ("tool calls", "tool_calls", "{:,.0f}"), ("tool time, summed (model s)", "tool_model_s",
                                                  "{:.0f}"),
        ("mean response tokens", "response_len_mean", "{:,.0f}"),
        ("trajectories answered and scored", "scored", "{:.0f}"),
        ("largest engine lag behind the clock (model s)", "engine_lag_s", "{:.1f}"),
        ("engine thread CPU (wall s)", "engine_cpu_s", "{:.1f}"),
        ("ideal parts: memory / compute / chain (s)", None, None)]


def format_side_by_side(title: str, new: dict, old: dict) -> str:
    lines = [title, f"{'':44s} {'new (continuous)':>18s} {'barrier (old)':>16s}"]
    for label, key, fmt in ROWS:
        if key is None:
            cells = [f"{r['memory_bound_s']:.0f}/{r['compute_bound_s']:.0f}/"
                     f"{r['chain_bound_s']:.0f}" for r in (new, old)]
        else:
            cells = [fmt.format(r[key]) for r in (new, old)]
        lines.append(f"{label:44s} {cells[0]:>18s} {cells[1]:>16s}")
    lines.append(f"{'finish reasons':44s} {json.dumps(new['finish']):>18s} "
                 f"{json.dumps(old['finish']):>16s}")
    for r in (new, old):
        if r["engine_lag_s"] > LAG_WARN * r["rollout_s"]:
            lines.append(f"WARNING: in the {r['mode']} run the engine fell {r['engine_lag_s']:.0f}"
                         " model s behind the wall clock: the box was too busy for this time "
                         "scale; rerun with a smaller --scale or on a quieter box")
    return "\n".join(lines)


def run_shape(setup: Setup, tokenizer, sandbox, modes=("new", "barrier")) -> dict:
    return {"shape": setup.shape.name,
            **{mode: run_mode(setup, mode, tokenizer, sandbox) for mode in modes}}


def _tokenizer():
    from transformers import AutoTokenizer

    from aster.tiny_model import build_tiny_model

    path = build_tiny_model(tempfile.mkdtemp(prefix="aster-rollout-scale-"))
    return AutoTokenizer.from_pretrained(path)


def describe(setup: Setup) -> str:
    m = setup.model
    return (f"{setup.trajectories} trajectories ({setup.trajectories // setup.group} prompts x "
            f"G={setup.group}), max response {setup.shape.max_response_tokens}, calls ~ "
            f"lognormal(median {setup.shape.calls_median:g}) capped {setup.shape.max_calls}, "
            f"turns ~ lognormal(median {setup.shape.turn_median:g}, sigma "
            f"{setup.shape.turn_sigma:g}) tokens, tools ~ lognormal(median "
            f"{setup.shape.tool_median_s:g} s); engine: KV {setup.kv_tokens:,} tokens "
            f"({setup.kv_tokens // BLOCK} blocks of {BLOCK}), max_num_seqs "
            f"{setup.max_num_seqs}, max_num_batched_tokens {setup.max_batched_tokens}, "
            f"Qwen3-4B/H100 roofline ({m.hbm_bytes_per_s / 1e12:g} TB/s x {m.hbm_efficiency:g}, "
            f"{m.peak_flops / 1e12:g} TFLOP/s x MFU {m.mfu:g}); time scale {setup.scale:g}x; "
            f"rollout.max_concurrency {setup.max_concurrency}, kv_admission "
            f"{'on' if setup.kv_admission else 'off'} (new mode); sandbox.max_sessions "
            f"{setup.trajectories} (covers every trajectory)")


def sandbox_pool(trajectories: int):
    from aster.sandbox import SandboxConfig, SandboxPool

    # sessions cover every trajectory: today's pool starves beyond ~2x max_sessions in flight
    return SandboxPool(SandboxConfig(max_sessions=trajectories, spare_workers=8, preload=[],
                                     timeout_s=60.0, acquire_timeout_s=600.0))


def run(backend=None, quick: bool = True) -> dict:
    """The throughput.py section `rollout_scale`: --quick is the stage-2 shape with 32
    trajectories at 100x; otherwise both stages, 128 trajectories, at 30x."""
    del backend  # the engine is modelled: nothing runs on the device
    sys.setswitchinterval(SWITCH_S)
    setups = ([Setup(SHAPES["2"], 32, 100.0)] if quick else
              [Setup(SHAPES["1"], 128, 30.0), Setup(SHAPES["2"], 128, 30.0)])
    tokenizer = _tokenizer()
    rows, notes = [], []
    with sandbox_pool(max(s.trajectories for s in setups)) as sandbox:
        for setup in setups:
            result = run_shape(setup, tokenizer, sandbox)
            notes.append(describe(setup))
            for mode in ("new", "barrier"):
                r = result[mode]
                for label, key, _ in ROWS:
                    if key is not None:
                        rows.append({"metric": f"{setup.shape.name} {mode}: {label}",
                                     "value": float(r[key]), "unit": "", "target": "",
                                     "ok": None})
            target = result["new"]
            if setup.shape.name == "stage2" and setup.trajectories >= 128:  # the done shape
                rows.append({"metric": "stage2 new: utilisation >= 85% and <= 1.3x ideal",
                             "value": float(target["slot_util"]), "unit": "frac",
                             "target": ">= 0.85, <= 1.3x",
                             "ok": target["slot_util"] >= 0.85 and target["vs_ideal"] <= 1.3})
    return {"section": "rollout_scale", "rows": rows, "notes": notes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="1,2", help="comma-separated: 1, 2")
    parser.add_argument("--trajectories", type=int, default=128)
    parser.add_argument("--scale", type=float, default=30.0,
                        help="model seconds per wall second")
    parser.add_argument("--max-concurrency", type=int, default=256,
                        help="rollout.max_concurrency (trajectories in flight)")
    parser.add_argument("--kv-tokens", type=int, default=KV_TOKENS)
    parser.add_argument("--quick", action="store_true",
                        help="stage-2 shape, 32 trajectories, scale 100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-only", action="store_true", help="skip the barrier run")
    parser.add_argument("--no-kv-admission", action="store_true",
                        help="the new mode with rollout.kv_admission off (every trajectory up "
                             "to --max-concurrency in flight)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in SHAPES]
    if bad or args.trajectories < 1 or args.scale <= 0 or args.max_concurrency < 1 \
            or args.kv_tokens < BLOCK:
        print(f"rollout_scale.py: error: stages {bad or stages} must be among 1, 2; "
              "--trajectories, --scale, --max-concurrency must be > 0 and --kv-tokens >= 16",
              file=sys.stderr)
        return 2
    if args.quick:
        stages, args.trajectories, args.scale = ["2"], 32, 100.0
    setups = [Setup(SHAPES[s], args.trajectories, args.scale, kv_tokens=args.kv_tokens,
                    max_concurrency=args.max_concurrency, seed=args.seed,
                    kv_admission=not args.no_kv_admission) for s in stages]
    sys.setswitchinterval(SWITCH_S)
    tokenizer = _tokenizer()
    results = []
    with sandbox_pool(args.trajectories) as sandbox:
        for setup in setups:
            t0 = time.perf_counter()
            modes = ("new",) if args.new_only else ("new", "barrier")
            result = run_shape(setup, tokenizer, sandbox, modes)
            result["wall_clock_s"] = time.perf_counter() - t0
            results.append(result)
            print(describe(setup))
            print(format_side_by_side(f"== {setup.shape.name} (ran {result['wall_clock_s']:.0f}"
                                      f" s of wall clock, {os.cpu_count()} cores, shared)",
                                      result["new"], result.get("barrier", result["new"])))
            print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
