"""avg@k evaluation with the tool (`aster eval`). The `eval:` section is EvalConfig.

`evaluate(engine, pool, benchmarks, eval_cfg, tokenizer)` samples k trajectories per problem
through aster.rollout's agent loop (the sandbox as the tool, eval sampling settings, up to
eval.max_tool_calls calls, eval.max_tokens response tokens), scores them with aster.reward and
returns a summary (avg@k, pass@k, tool calls per trajectory, per benchmark) and one row per
sample (text, extracted answer, score, tool calls), which `write_results` saves as jsonl.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from aster.data.io import read_rows
from aster.eval_budgets import cut_at_budget
from aster.eval_split import gather_rows, rank_share, share_from_main
from aster.reward import extract_answer, score
from aster.rollout.config import RolloutConfig
from aster.rollout.loop import run_rollouts

logger = logging.getLogger("aster")


@dataclass
class EvalConfig:
    k: int = 16  # samples per problem: avg@k and pass@k
    temperature: float = 0.6
    top_p: float = 0.95
    max_tool_calls: int = 256
    max_tokens: int = 30000  # the token budget (30K or 90K in the paper's tables)
    # several budgets from one generation (e.g. [30000, 90000]): sampled once at the largest,
    # each smaller one scored by cutting every trajectory where that budget ends
    # (aster.eval_budgets); one table per budget. None may exceed max_tokens, which is always
    # scored and is the budget generated at
    budgets: list[int] = field(default_factory=list)
    pass_k: list[int] = field(default_factory=lambda: [1, 16])
    max_problems: int = 0  # 0: all
    seed: int = 0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"eval.k={self.k!r} must be >= 1")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"eval.top_p={self.top_p!r} must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError(f"eval.temperature={self.temperature!r} must be >= 0")
        for key in ("max_tool_calls", "max_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key}={getattr(self, key)!r} must be >= 1")
        if not isinstance(self.budgets, list) or any(
                isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.budgets):
            raise ValueError(f"eval.budgets={self.budgets!r} must be a list of token budgets "
                             ">= 1 (e.g. [30000, 90000]) or [] for eval.max_tokens alone")
        if self.budgets and max(self.budgets) > self.max_tokens:
            # the generation runs at max_tokens; a larger budget cannot be cut out of it, and
            # dropping it silently would hide an override of max_tokens
            raise ValueError(f"eval.budgets={self.budgets!r} go past eval.max_tokens="
                             f"{self.max_tokens}, the budget generated at: raise eval.max_tokens "
                             "or set eval.budgets=[] (or smaller budgets)")
        if any(p < 1 for p in self.pass_k):
            raise ValueError(f"eval.pass_k={self.pass_k!r} must hold values >= 1")
        for key in ("max_problems", "seed"):
            if getattr(self, key) < 0:
                raise ValueError(f"eval.{key}={getattr(self, key)!r} must be >= 0")


    @property
    def budget_list(self) -> list[int]:
        """The budgets scored, smallest first: eval.budgets and eval.max_tokens (the largest,
        the one generated at)."""
        return sorted({*self.budgets, self.max_tokens})


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c are correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _p50(values) -> float:
    values = sorted(values)
    return float(values[len(values) // 2]) if values else 0.0


def summarize_rows(rows: list[dict], pass_k: list[int]) -> dict:
    """Per-benchmark figures from per-sample rows (avg@k, pass@k, tool calls, lengths)."""
    out = {}
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        bench_rows = [r for r in rows if r["benchmark"] == bench]
        by_problem: dict[int, list[float]] = {}
        for r in bench_rows:
            by_problem.setdefault(r["index"], []).append(r["score"])
        n = min(len(s) for s in by_problem.values())
        entry = {"problems": len(by_problem), "k": n,
                 f"avg@{n}": _mean(r["score"] for r in bench_rows)}
        for k in pass_k:
            if k <= n:
                entry[f"pass@{k}"] = _mean(pass_at_k(len(s), int(sum(s)), k)
                                           for s in by_problem.values())
        calls = [r["tool_calls"] for r in bench_rows]
        entry.update({
            "accuracy": entry[f"avg@{n}"], "tool_calls_mean": _mean(calls),
            "tool_calls_p50": _p50(calls),
            "tool_errors_mean": _mean(r["tool_errors"] for r in bench_rows),
            "response_tokens_mean": _mean(r["response_tokens"] for r in bench_rows),
            "finish_reasons": dict(Counter(r["finish_reason"] for r in bench_rows)),
            # samples the sandbox failed (scored 0): their rate, so that it is never hidden
            "sandbox_unavailable": _mean(r["finish_reason"] == "sandbox_unavailable"
                                         for r in bench_rows),
        })
        out[bench] = entry
    return out


def _summary(rows: list[dict], eval_cfg: EvalConfig) -> dict:
    benchmarks = summarize_rows(rows, eval_cfg.pass_k)
    return {"benchmarks": benchmarks, "k": eval_cfg.k,
            "accuracy": _mean(b["accuracy"] for b in benchmarks.values()),
            "tool_calls_mean": _mean(r["tool_calls"] for r in rows),
            "samples": len(rows)}


def eval_rollout_config(eval_cfg: EvalConfig, rollout_cfg=None):
    """The agent-loop settings for evaluation: rollout_cfg (engine limits, tool timeouts) with
    the eval sampling settings, tool-call limit and token budget."""
    return replace(rollout_cfg or RolloutConfig(), temperature=eval_cfg.temperature,
                   top_p=eval_cfg.top_p, top_k=-1, max_tool_calls=eval_cfg.max_tool_calls,
                   max_response_tokens=eval_cfg.budget_list[-1])


def _agent_rollouts(engine, pool, tokenizer, problems: list[str], eval_cfg: EvalConfig,
                    rollout_cfg=None, only: list[tuple[int, int]] | None = None,
                    label: str = "eval"):
    """k trajectories per problem (problem-major) through aster.rollout's agent loop, or the
    (problem, sample) pairs `only` names; `label` names them on the progress display."""
    return run_rollouts(engine, pool, problems, eval_rollout_config(eval_cfg, rollout_cfg),
                        tokenizer=tokenizer, samples_per_prompt=eval_cfg.k, seed=eval_cfg.seed,
                        only=only, label=label, announce=True)


def _row(bench: str, index: int, sample: int, prompt: dict, traj, budget: int,
         match: str = "math_verify") -> dict:
    final = traj.final_text or traj.text
    return {"benchmark": bench, "budget": budget, "index": index, "sample": sample,
            "problem": prompt["problem"], "answer": prompt["answer"],
            "prediction": extract_answer(final),
            "score": score(final, prompt["answer"], truncated=traj.truncated, match=match),
            "tool_calls": traj.num_tool_calls,
            "tool_errors": traj.tool_errors + getattr(traj, "exec_errors", 0),
            "finish_reason": traj.finish_reason, "response_tokens": len(traj.response_ids),
            "text": traj.text}


def eval_problems(prompts: list[dict], eval_cfg: EvalConfig) -> list[dict]:
    """The problems of one benchmark that are evaluated: the first eval.max_problems."""
    return prompts[: eval_cfg.max_problems] if eval_cfg.max_problems else prompts


def log_eval_plan(benchmarks: dict[str, list[dict]], eval_cfg: EvalConfig) -> int:
    """Log each benchmark's problems x k before anything loads, and say what limits them:
    eval.max_problems does, data.max_rows (training data) does not. Returns the total."""
    total = 0
    for bench, prompts in benchmarks.items():
        n = len(eval_problems(prompts, eval_cfg))
        total += n * eval_cfg.k
        logger.info("eval %s: %d problems x k=%d = %d trajectories", bench, n, eval_cfg.k,
                    n * eval_cfg.k)
    limit = (f"eval.max_problems={eval_cfg.max_problems}" if eval_cfg.max_problems
             else "eval.max_problems=0: every problem")
    logger.info("eval: %d trajectories in all (%s; data.max_rows does not limit aster eval)",
                total, limit)
    return total


def evaluate(engine, pool, benchmarks: dict[str, list[dict]] | list[dict],
             eval_cfg: EvalConfig, tokenizer, *, rollout_cfg=None,
             dist=None) -> tuple[dict, list[dict]]:
    """Evaluate `engine` on benchmarks (name -> prompts {problem, answer}, or one list).

    k samples per problem through aster.rollout's agent loop with the sandbox `pool`; the
    eval sampling settings, tool-call limit and token budget override `rollout_cfg` (a
    RolloutConfig: tool timeout, concurrency). Returns (summary, rows): summary
    ``{"benchmarks": {name: {avg@k, pass@k.., accuracy, tool_calls_mean, ...}}, "accuracy",
    "tool_calls_mean", "k", "samples"}`` and one row per sample (text, answer, score, calls).
    `dist` (a DistInfo) with more than one rank: each rank rolls out its share of the
    problems x samples (aster.eval_split), rank 0 gets every row, every rank the summary.
    """
    if not isinstance(benchmarks, dict):
        benchmarks = {"eval": benchmarks}
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    rows = []
    for bench, prompts in benchmarks.items():
        prompts = eval_problems(prompts, eval_cfg)
        share = rank_share(len(prompts), eval_cfg.k, rank, world)
        label = f"eval {bench}" + (f" (rank 0's share of {world})" if world > 1 else "")
        trajs = _agent_rollouts(engine, pool, tokenizer, [p["problem"] for p in prompts],
                                eval_cfg, rollout_cfg, only=share, label=label)
        if len(trajs) != len(share):
            raise RuntimeError(f"rollouts returned {len(trajs)} trajectories for "
                               f"{len(share)} (problem, sample) pairs")
        rows += budget_rows(bench, prompts, share, trajs, eval_cfg, tokenizer,
                            eval_rollout_config(eval_cfg, rollout_cfg).reward_match)
    rows = gather_rows(rows, dist, list(benchmarks))
    summary = share_from_main(summarize_budgets(rows, eval_cfg) if rank == 0 else None, dist)
    return summary, rows


def budget_rows(bench: str, prompts: list[dict], pairs, trajs, eval_cfg: EvalConfig,
                tokenizer, match: str = "math_verify") -> list[dict]:
    """One row per (problem, sample) in `pairs` per budget: the trajectories as generated (at
    the largest budget) and, for each smaller budget, each one cut where that budget ends."""
    rows, largest = [], eval_cfg.budget_list[-1]
    for budget in eval_cfg.budget_list:
        for (i, sample), traj in zip(pairs, trajs):
            view = traj if budget == largest else cut_at_budget(traj, budget, tokenizer)
            rows.append(_row(bench, i, sample, prompts[i], view, budget, match))
    return rows


def summarize_budgets(rows: list[dict], eval_cfg: EvalConfig) -> dict:
    """The summary of the largest budget's rows (as with one budget), plus ``budgets``:
    {budget: summary} for every budget scored."""
    per_budget = {b: _summary([r for r in rows if r.get("budget", b) == b], eval_cfg)
                  for b in eval_cfg.budget_list}
    largest = per_budget[eval_cfg.budget_list[-1]]
    return {**largest, "budgets": {str(b): {**s, "budget": b} for b, s in per_budget.items()}}


def format_table(summary: dict) -> str:
    """One table per budget (a title line each when there are several), one line per
    benchmark: avg@k, pass@k, tool calls per trajectory, response length."""
    budgets = summary.get("budgets") or {}
    if len(budgets) > 1:
        return "\n\n".join(f"budget {int(b):,} tokens\n{_benchmark_lines(s)}"
                            for b, s in budgets.items())
    return _benchmark_lines(summary)


def _benchmark_lines(summary: dict) -> str:
    lines = []
    for bench, entry in summary["benchmarks"].items():
        scores = "  ".join(f"{k}={v * 100:5.1f}" for k, v in entry.items()
                           if k.startswith(("avg@", "pass@")))
        lines.append(f"{bench:<16} {entry['problems']:>4} problems  {scores}  "
                     f"tool_calls={entry['tool_calls_mean']:.2f} "
                     f"(p50 {entry['tool_calls_p50']:g})  "
                     f"resp_tokens={entry['response_tokens_mean']:.0f}")
    return "\n".join(lines)


def write_results(summary: dict, rows: list[dict], out_dir: str | os.PathLike) -> Path:
    """samples.jsonl (one row per sample, the largest budget's) and summary.json in
    `out_dir`, and samples-<budget>.jsonl for each smaller budget; returns samples.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budgets = sorted({r["budget"] for r in rows if "budget" in r})
    samples = out / "samples.jsonl"
    for budget in budgets or [None]:
        path = samples if budget in (None, budgets[-1]) else out / f"samples-{budget}.jsonl"
        _write_jsonl(path, [r for r in rows if budget is None or r.get("budget") == budget])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return samples


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def compare(paths: list[str], pass_k: list[int] | None = None) -> str:
    """A side-by-side table of per-sample jsonl files (e.g. SFT vs RL, or two backends)."""
    summaries = [summarize_rows(read_rows(p)[0], pass_k or [1]) for p in paths]
    names = [Path(p).parent.name if Path(p).name == "samples.jsonl" else Path(p).stem
             for p in paths]
    benches = list(dict.fromkeys(b for s in summaries for b in s))
    header = f"{'benchmark':<16} {'metric':<16}" + "".join(f"{n[:18]:>20}" for n in names)
    lines = [header, "-" * len(header)]
    for bench in benches:
        metrics = list(dict.fromkeys(k for s in summaries for k in s.get(bench, {})
                                     if k.startswith(("avg@", "pass@")) or k in (
                                         "tool_calls_mean", "response_tokens_mean")))
        for metric in metrics:
            cells = []
            for s in summaries:
                value = s.get(bench, {}).get(metric)
                scale = 100 if metric.startswith(("avg@", "pass@")) else 1
                cells.append(f"{value * scale:>20.2f}" if value is not None else f"{'-':>20}")
            lines.append(f"{bench:<16} {metric:<16}" + "".join(cells))
    return "\n".join(lines)
