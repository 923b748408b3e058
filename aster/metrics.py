"""Per-step metrics: metrics.jsonl and TensorBoard (every step), the console (rank 0, logger
"aster": one fixed line per RL step; for SFT a progress bar and a summary line every N steps),
and the interaction-collapse monitor."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("aster")

CONSOLE_KEYS = ("loss", "reward", "tool_calls", "resp_len", "grad_norm", "tok/s", "mem")


def format_line(stage: str, step: int, m: dict, total: int | None = None) -> str:
    """`[stage] step N loss .. reward .. tool_calls .. resp_len .. grad_norm .. tok/s .. mem ..`"""
    sources = {"loss": m.get("loss"), "reward": m.get("reward_mean"),
               "tool_calls": m.get("tool_calls_mean"), "resp_len": m.get("response_len_mean"),
               "grad_norm": m.get("grad_norm"), "tok/s": m.get("tokens_per_s"),
               "mem": m.get("mem_peak_gib")}
    parts = [f"[{stage}] step {step}" + (f"/{total}" if total else "")]
    for key in CONSOLE_KEYS:
        v = sources[key]
        if v is None:
            parts.append(f"{key} -")
        elif key == "mem":
            parts.append(f"mem {v:.2f}G")
        elif key in ("tok/s", "resp_len"):
            parts.append(f"{key} {v:.0f}")
        else:
            parts.append(f"{key} {v:.4f}" if key in ("loss", "grad_norm") else f"{key} {v:.3f}")
    return " ".join(parts)


class CollapseMonitor:
    """Warns when tool calls per trajectory fall below `min_fraction` of their early value
    (mean over the first `early_steps`) while reward over the recent `window` is flat or
    falling. `update` returns the flag and its inputs so they land in the metrics."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.tool_calls: list[float] = []
        self.rewards: list[float] = []

    def update(self, tool_calls: float, reward: float) -> dict:
        self.tool_calls.append(tool_calls)
        self.rewards.append(reward)
        c = self.cfg
        if not c.enabled or len(self.tool_calls) < c.early_steps + c.window:
            return {"collapse_warning": 0.0}
        early = sum(self.tool_calls[:c.early_steps]) / c.early_steps
        recent = self.tool_calls[-c.window:]
        recent_calls = sum(recent) / c.window
        rewards = self.rewards[-c.window:]
        flat_or_falling = rewards[-1] <= rewards[0] + 1e-9
        collapsed = early > 0 and recent_calls < c.min_fraction * early and flat_or_falling
        if collapsed:
            log.warning("interaction collapse: tool calls per trajectory %.2f fell below "
                        "%.0f%% of their early value %.2f while reward is flat or falling",
                        recent_calls, 100 * c.min_fraction, early)
        return {"collapse_warning": float(collapsed), "tool_calls_early": early,
                "tool_calls_recent": recent_calls}


def held_out_collapse(after_sft: dict, after_rl: dict, min_fraction: float) -> str | None:
    """The warning for an RL stage whose held-out tool calls per trajectory fell below
    `min_fraction` of after SFT while held-out accuracy did not rise; None when they held.
    Both dicts are `{"accuracy": .., "tool_calls_mean": ..}` as in summary.json."""
    before, now = after_sft["tool_calls_mean"], after_rl["tool_calls_mean"]
    if before <= 0 or now >= min_fraction * before:
        return None
    if after_rl["accuracy"] > after_sft["accuracy"]:
        return None
    return (f"interaction collapse on held-out problems: tool calls per trajectory {now:.2f} are "
            f"{100 * now / before:.0f}% of after SFT ({before:.2f}) and accuracy went "
            f"{100 * after_sft['accuracy']:.1f}% -> {100 * after_rl['accuracy']:.1f}%; lower "
            "rl.lr or resume from an earlier checkpoint")


def show_progress(setting: bool | str, stream=None) -> bool:
    """logging.progress: True forces the bar, False hides it, "auto" shows it on a terminal."""
    if setting == "auto":
        stream = stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(setting)


class StageProgress:
    """The console of a long stage (SFT: hundreds of steps): a tqdm bar with the loss, and one
    summary line (means over the steps since the last one) every `every` steps and at the end,
    instead of a line per step. `every=0`: about 20 lines per stage."""

    def __init__(self, stage: str, first_step: int, total: int, every: int, bar: bool):
        self.stage, self.total = stage, total
        self.every = every or max(1, math.ceil(total / 20))
        self.window: list[dict] = []
        self.first = first_step
        self.bar = tqdm(total=total, initial=first_step - 1, desc=stage, unit="step",
                        file=sys.stderr, dynamic_ncols=True, disable=not bar)
        # log lines go above the bar instead of through it
        self._redirect = logging_redirect_tqdm() if bar else None
        if self._redirect is not None:
            self._redirect.__enter__()

    def update(self, step: int, metrics: dict) -> None:
        self.window.append(metrics)
        if isinstance(metrics.get("loss"), (int, float)):
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        self.bar.update(step - self.bar.n)
        if step % self.every == 0 or step == self.total:
            tail = f" (mean of steps {step - len(self.window) + 1}-{step})"
            log.info(format_line(self.stage, step, window_means(self.window), self.total) + tail)
            self.window = []
        if step == self.total:
            self.close()

    def close(self) -> None:
        self.bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def window_means(window: list[dict]) -> dict:
    """The summary of several steps: mean loss and grad norm, tokens over time, peak memory."""
    def numbers(key):
        return [m[key] for m in window if isinstance(m.get(key), (int, float))]

    out = {k: sum(v) / len(v) for k in ("loss", "grad_norm") if (v := numbers(k))}
    tokens, seconds = numbers("tokens"), numbers("step_time_s")
    if tokens and seconds and sum(seconds) > 0:
        out["tokens_per_s"] = sum(tokens) / sum(seconds)
    if mem := numbers("mem_peak_gib"):
        out["mem_peak_gib"] = max(mem)
    return out


class MetricsWriter:
    """Appends one JSON record per step to run_dir/metrics.jsonl and TensorBoard (rank 0), and
    reports steps on the console: a line every `log_every` steps, or, for a stage written with
    `total=` (SFT), a progress bar (`progress`: see show_progress) and a summary line every
    `summary_every` steps (0: about 20 per stage)."""

    def __init__(self, run_dir: str | Path, *, is_main: bool = True, tensorboard: bool = True,
                 log_every: int = 1, progress: bool | str = "auto", summary_every: int = 0):
        self.is_main = is_main
        self.log_every = log_every
        self.progress, self.summary_every = progress, summary_every
        self._stages: dict[str, StageProgress] = {}
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if is_main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    @classmethod
    def from_config(cls, run_dir: str | Path, logging_cfg, *, is_main: bool = True):
        """The writer a run's `logging:` section asks for."""
        return cls(run_dir, is_main=is_main, tensorboard=logging_cfg.tensorboard,
                   log_every=logging_cfg.log_every, progress=logging_cfg.progress,
                   summary_every=logging_cfg.sft_log_every)

    def write(self, stage: str, step: int, metrics: dict, global_step: int | None = None,
              total: int | None = None) -> None:
        """Record one step; `total` (the stage's step count) marks a long stage: progress bar
        and summary lines on the console instead of a line per step."""
        if not self.is_main:
            return
        record = {"stage": stage, "step": step,
                  **{k: _clean(v) for k, v in metrics.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            gs = step if global_step is None else global_step
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{stage}/{k}", v, gs)
            self.tb.flush()
        if total is not None:
            self._stage(stage, step, total).update(step, metrics)
            if step == total:
                del self._stages[stage]
        elif step % self.log_every == 0:
            log.info(format_line(stage, step, metrics))

    def _stage(self, stage: str, step: int, total: int) -> StageProgress:
        if stage not in self._stages:
            self._stages[stage] = StageProgress(stage, step, total, self.summary_every,
                                                show_progress(self.progress))
        return self._stages[stage]

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop records of `stage` past `step` (a resumed run rewrites them)."""
        if not self.is_main or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line and not (json.loads(line)["stage"] == stage
                                 and json.loads(line)["step"] > step)]
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def close(self) -> None:
        for progress in self._stages.values():
            progress.close()
        if self.tb is not None:
            self.tb.close()


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
