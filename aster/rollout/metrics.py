"""Rollout metrics: interaction density first (tool calls per trajectory), then the rest."""

from __future__ import annotations

import numpy as np

from aster.rollout.agent import FINISH_REASONS, Trajectory


def _quantiles(values: list[float], prefix: str) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) if values else np.zeros(1)
    return {f"{prefix}_mean": float(arr.mean()), f"{prefix}_p50": float(np.percentile(arr, 50)),
            f"{prefix}_p90": float(np.percentile(arr, 90)), f"{prefix}_max": float(arr.max())}


def rollout_metrics(trajs: list[Trajectory], stats: dict | None = None) -> dict[str, float]:
    """Tool calls per trajectory (mean/p50/p90/max), response length, finish-reason fractions,
    tool error rates, reward, and the generation / tool time split (from `stats`, the
    AgentLoop's wall-time split, when given; else summed per trajectory)."""
    n = max(len(trajs), 1)
    out = _quantiles([t.num_tool_calls for t in trajs], "tool_calls")
    out.update(_quantiles([len(t.response_ids) for t in trajs], "response_len"))
    out["sampled_tokens_mean"] = sum(sum(t.loss_mask) for t in trajs) / n
    for reason in FINISH_REASONS:
        out[f"finish_{reason}"] = sum(t.finish_reason == reason for t in trajs) / n
    calls = sum(t.num_tool_calls for t in trajs)
    malformed = sum(t.tool_errors for t in trajs)
    out["tool_error_rate"] = malformed / max(calls + malformed, 1)  # malformed calls
    out["tool_exec_error_rate"] = sum(t.exec_errors for t in trajs) / max(calls, 1)
    out["reward_mean"] = sum(t.reward for t in trajs) / n
    out["turns_mean"] = sum(t.num_turns for t in trajs) / n
    if stats:
        wall = stats.get("wall_s", 0.0)
        out.update({"wall_s": wall, "gen_s": stats.get("gen_busy_s", 0.0),
                    "tool_s": stats.get("tool_busy_s", 0.0),
                    "overhead_frac": stats.get("overhead_frac", 0.0)})
        if wall > 0:
            out["gen_frac"] = out["gen_s"] / wall
            out["tool_frac"] = out["tool_s"] / wall
    else:
        out["gen_s"] = sum(t.timing["gen_s"] for t in trajs)
        out["tool_s"] = sum(t.timing["tool_s"] for t in trajs)
    return out
