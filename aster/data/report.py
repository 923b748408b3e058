"""Summary tables and histograms for `aster data stats` (text, and a PNG when asked)."""

from __future__ import annotations

from collections import Counter

from aster.data.curate import USE_KINDS, TrajectoryStats


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summarize(stats: list[TrajectoryStats]) -> dict:
    """Aggregate figures over trajectories (a flat dict, JSON-ready)."""
    n = len(stats)
    calls = [s.tool_calls for s in stats]
    tokens = [s.tokens for s in stats]
    scored = [s.correct for s in stats if s.correct is not None]
    uses = Counter(s.use for s in stats)
    out = {
        "trajectories": n,
        "tool_calls_mean": sum(calls) / n if n else 0.0,
        "tool_calls_p50": _pct(calls, 0.5), "tool_calls_p90": _pct(calls, 0.9),
        "tool_calls_max": max(calls, default=0),
        "tool_errors_mean": sum(s.tool_errors for s in stats) / n if n else 0.0,
        "with_tool_errors": sum(s.tool_errors > 0 for s in stats) / n if n else 0.0,
        "turns_mean": sum(s.turns for s in stats) / n if n else 0.0,
        "tokens_mean": sum(tokens) / n if n else 0.0, "tokens_p90": _pct(tokens, 0.9),
        "tokens_max": max(tokens, default=0),
        "scored": len(scored),
        "accuracy": sum(scored) / len(scored) if scored else None,
    }
    for kind in USE_KINDS:
        out[f"use_{kind}"] = uses.get(kind, 0) / n if n else 0.0
    for threshold in (1, 5, 9, 16):
        out[f"tool_calls_ge_{threshold}"] = sum(c >= threshold for c in calls)
    return out


def format_summary(summary: dict) -> str:
    """A two-column table."""
    lines = []
    for key, value in summary.items():
        if value is None:
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        lines.append(f"  {key:<22} {text:>10}")
    return "\n".join(lines)


def text_histogram(values: list[int], width: int = 40, max_bins: int = 20) -> str:
    """One line per value (or range of values): count and a bar."""
    if not values:
        return "  (no trajectories)"
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // max_bins))
    counts = Counter((v - lo) // step for v in values)
    top = max(counts.values())
    lines = []
    for b in range((hi - lo) // step + 1):
        start = lo + b * step
        label = f"{start}" if step == 1 else f"{start}-{start + step - 1}"
        n = counts.get(b, 0)
        lines.append(f"  {label:>9} | {'#' * round(width * n / top):<{width}} {n}")
    return "\n".join(lines)


def write_png(stats: list[TrajectoryStats], path: str) -> None:
    """Histograms of tool calls and tokens per trajectory, and the tool-use kinds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].hist([s.tool_calls for s in stats], bins=30, color="tab:blue")
    axes[0].set(title="tool calls per trajectory", xlabel="tool calls", ylabel="trajectories")
    axes[1].hist([s.tokens for s in stats], bins=30, color="tab:green")
    axes[1].set(title="tokens per trajectory", xlabel="tokens")
    uses = Counter(s.use for s in stats)
    axes[2].bar(list(USE_KINDS), [uses.get(k, 0) for k in USE_KINDS], color="tab:orange")
    axes[2].set(title="tool use")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _is_integer(answer: str) -> bool:
    text = answer.strip().replace(",", "")
    return text.lstrip("-+").isdigit()


def prompt_summary(prompts: list[dict], tokenizer=None) -> dict:
    """Figures over an RL prompt / eval set: sources, answer kinds, problem lengths, and the
    mean / min / max of every float extra column (e.g. DAPO's stage-1 `acc_mean@8`; integer
    columns are ids and counts)."""
    n = len(prompts)
    lengths = [len(p["problem"]) for p in prompts]
    integers = sum(_is_integer(p["answer"]) for p in prompts)
    out = {"prompts": n, "integer_answers": integers, "other_answers": n - integers,
           "problem_chars_mean": sum(lengths) / n if n else 0.0,
           "problem_chars_p50": _pct(lengths, 0.5), "problem_chars_p90": _pct(lengths, 0.9),
           "problem_chars_max": max(lengths, default=0)}
    if tokenizer is not None:
        tokens = [len(tokenizer(p["problem"], add_special_tokens=False)["input_ids"])
                  for p in prompts]
        out.update(problem_tokens_mean=sum(tokens) / n if n else 0.0,
                   problem_tokens_max=max(tokens, default=0))
    for source, count in Counter(p.get("data_source") or "-" for p in prompts).most_common(8):
        out[f"source {source}"] = count
    extras = [p.get("extra") or {} for p in prompts]
    for key in dict.fromkeys(k for e in extras for k in e):
        values = [e.get(key) for e in extras]
        if all(isinstance(v, float) for v in values):
            out.update({f"{key} mean": sum(values) / n, f"{key} min": min(values),
                        f"{key} max": max(values)})
    return out
