"""`aster plot`: draw reward, accuracy, tool-call and response-length curves of a run to PNG."""

from __future__ import annotations

from pathlib import Path

from aster.errors import AsterUserError
from aster.metrics import read_metrics

DESC = "Draw reward, accuracy, tool-call and response-length curves of a run to PNG."
CURVES = (("reward_mean", "reward"), ("accuracy", "accuracy"),
          ("tool_calls_mean", "tool calls per trajectory"),
          ("response_len_mean", "response length (tokens)"), ("loss", "loss"))


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """One PNG per curve (every stage on it, steps laid end to end); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise AsterUserError(f"{run_dir} has no metrics.jsonl records; give a run directory "
                             "written by aster train / sft / rl")
    out = Path(out_dir or Path(run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title in CURVES:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        offset, drawn = 0, False
        for stage in dict.fromkeys(r["stage"] for r in records):
            rows = [r for r in records if r["stage"] == stage and isinstance(r.get(key),
                                                                             (int, float))]
            if rows:
                ax.plot([offset + r["step"] for r in rows], [r[key] for r in rows], label=stage)
                drawn = True
            offset += max((r["step"] for r in records if r["stage"] == stage), default=0)
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend()
            path = out / f"{key}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            written.append(path)
        plt.close(fig)
    return written


def run(args) -> int:
    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0


def register(sub) -> None:
    parser = sub.add_parser("plot", help=DESC, description=DESC)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="where to write the PNGs (default RUN_DIR/plots)")
    parser.set_defaults(func=run)
