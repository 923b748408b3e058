"""Data: SFT trajectories, RL prompts and eval sets in one internal form each, the synthetic
tiny task, curation and teacher synthesis.

Entry points for the trainers: `sft_examples`, `rl_prompts`, `eval_sets` resolve a DataConfig's
paths (a local .parquet/.jsonl file, or ``synthetic`` for the embedded task) to lists in the
internal forms (see aster.data.formats and aster.data.prompts).
"""

from __future__ import annotations

import logging
from pathlib import Path

from aster.data.curate import count_tool_calls
from aster.data.formats import load_sft, write_sft
from aster.data.prompts import load_prompts, prompt_messages, user_turn, write_prompts
from aster.data.synthetic import build_synthetic

logger = logging.getLogger("aster")

__all__ = ["eval_sets", "load_prompts", "load_sft", "prompt_messages", "rl_prompts",
           "sft_examples", "synthetic_data", "user_turn", "write_prompts", "write_sft"]

_CACHE: dict = {}


def synthetic_data(data_cfg, sandbox_cfg=None):
    """The synthetic task's three splits, built once per (task config) in this process."""
    key = repr(data_cfg.synthetic)
    if key not in _CACHE:
        _CACHE[key] = build_synthetic(data_cfg.synthetic, sandbox_cfg)
    return _CACHE[key]


def _limit(items: list, max_rows: int) -> list:
    return items[:max_rows] if max_rows else items


def sft_examples(data_cfg, sandbox_cfg=None) -> list[dict]:
    """SFT trajectories from data_cfg.sft_path, keeping those with >= data_cfg.min_tool_calls."""
    if data_cfg.sft_path == "synthetic":
        examples = synthetic_data(data_cfg, sandbox_cfg).sft
    else:
        examples = load_sft(data_cfg.sft_path).examples
    kept = [e for e in examples if count_tool_calls(e) >= data_cfg.min_tool_calls]
    if len(kept) < len(examples):
        logger.info("SFT data: %d of %d trajectories have fewer than %d tool calls; dropped",
                    len(examples) - len(kept), len(examples), data_cfg.min_tool_calls)
    return _limit(kept, data_cfg.max_rows)


def rl_prompts(data_cfg, sandbox_cfg=None) -> list[dict]:
    """RL prompts {problem, answer, data_source} from data_cfg.rl_path."""
    if data_cfg.rl_path == "synthetic":
        return _limit(synthetic_data(data_cfg, sandbox_cfg).rl, data_cfg.max_rows)
    return _limit(load_prompts(data_cfg.rl_path).prompts, data_cfg.max_rows)


def eval_sets(data_cfg, sandbox_cfg=None) -> dict[str, list[dict]]:
    """Benchmark name (the file's stem, or ``synthetic``) -> its prompts."""
    sets = {}
    for path in data_cfg.eval_paths:
        if path == "synthetic":
            sets["synthetic"] = synthetic_data(data_cfg, sandbox_cfg).eval
        else:
            sets[Path(path).stem] = load_prompts(path).prompts
    return sets
