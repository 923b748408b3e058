"""Teacher synthesis (`aster data synth`): run a teacher on a prompt set with aster's sandbox as
its tool and write the trajectories as SFT data.

Two kinds of teacher produce the same rows:
- an aster rollout engine (hf, vllm) with aster's agent loop: `EngineTeacher`
  (aster.data.synth_engine), trajectories converted back from tokens by
  aster.data.trajectory;
- an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server): `HTTPTeacher`
  (aster.data.synth_http).

Rows are written in the layout `--format` or the output suffix says (ASTER_SFT4K parquet,
OpenAI `messages` jsonl, aster jsonl), each with `problem`, `sample`, `answer`, `correct`
(the final answer re-scored with aster.reward; False when the trajectory was cut off),
`finish_reason` and `tool_calls`. Resumable: (problem, sample) pairs already written are
skipped (see aster.data.synth_store).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from aster.data.curate import count_tool_calls, is_correct
from aster.data.formats import sft_row, validate_example
from aster.data.synth_result import SynthResult
from aster.data.synth_store import SynthStore

logger = logging.getLogger("aster")

TRUNCATED = ("length", "max_tool_calls")  # cut off: scored incorrect whatever the text says


@dataclass
class SynthConfig:
    """One teacher run's settings (both teacher kinds)."""

    endpoint: str | None = None  # base URL, e.g. http://127.0.0.1:8000/v1 (HTTP teacher)
    model: str = "teacher"  # model name sent to the endpoint
    samples_per_prompt: int = 1
    max_tool_calls: int = 50
    # HTTP: per completion request; engine: the whole trajectory's response budget
    # (tool-output tokens included, as in RL rollouts)
    max_tokens: int = 16384
    temperature: float = 1.0
    top_p: float = 1.0
    concurrency: int = 8  # HTTP: requests in flight; engine: trajectories per rollout batch
    timeout_s: float = 600.0
    api_key: str | None = None
    seed: int = 0  # engine sampling seed

    def __post_init__(self):
        for key in ("samples_per_prompt", "max_tool_calls", "max_tokens", "concurrency"):
            if getattr(self, key) < 1:
                raise ValueError(f"synth.{key}={getattr(self, key)!r} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"synth.temperature={self.temperature!r} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"synth.top_p={self.top_p!r} must be in (0, 1]")


def _meta(result: SynthResult) -> dict:
    return {"problem": result.prompt["problem"], "sample": result.sample,
            "answer": result.prompt.get("answer"), "finish_reason": result.finish_reason}


def result_row(result: SynthResult, layout: str, file_kind: str) -> dict:
    """The output row of an accepted result: the layout's columns plus the metadata."""
    example = result.example
    correct = is_correct(example)
    if correct is not None and result.finish_reason in TRUNCATED:
        correct = False
    return {**sft_row(example, layout, file_kind), **_meta(result), "correct": correct,
            "tool_calls": count_tool_calls(example)}


def rejected_row(result: SynthResult) -> dict:
    """The ``OUT.rejected.jsonl`` line of a trajectory that cannot be SFT data."""
    return {**_meta(result), "reason": result.reason, "text": result.text}


def synthesize(prompts: list[dict], out_path: str | os.PathLike, cfg: SynthConfig, teacher, *,
               layout: str | None = None, progress: bool = True) -> dict:
    """Run `teacher` (an EngineTeacher or HTTPTeacher) on every (prompt, sample) not yet done
    in `out_path`; write rows as they finish. `layout`: sharegpt / openai / aster (default
    from the suffix). Returns counts: done (this run), skipped (already there), rejected, the
    finish reasons and how many rows were correct."""
    store = SynthStore(out_path, layout)
    todo = [(p, s) for p in prompts for s in range(cfg.samples_per_prompt)
            if (p["problem"], s) not in store.done]
    counts = Counter(done=0, skipped=len(prompts) * cfg.samples_per_prompt - len(todo),
                     rejected=0, correct=0)
    finish: Counter = Counter()
    bar = tqdm(total=len(todo), desc="synth", unit="traj", disable=not progress)
    try:
        for results in teacher.run(todo):
            rows, rejected = [], []
            for result in results:
                if result.example is not None:
                    try:
                        validate_example(result.example)
                    except ValueError as exc:
                        result.reason, result.example = str(exc), None
                if result.example is None:
                    rejected.append(rejected_row(result))
                    continue
                rows.append(result_row(result, store.layout, store.kind))
                counts["correct"] += bool(rows[-1]["correct"])
            store.add(rows, rejected, flush_every=cfg.concurrency)
            counts.update(done=len(results), rejected=len(rejected))
            finish.update(r.finish_reason for r in results)
            bar.update(len(results))
    finally:
        store.close()
        bar.close()
    if counts["rejected"]:
        logger.warning("%d trajectories could not be SFT data (listed with the reason in %s)",
                       counts["rejected"], store.rejected_path)
    return {**counts, "finish_reasons": dict(finish)}
