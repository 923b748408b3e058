"""The trainers' side of the rollout seam: build the engine, generate G samples per prompt,
push new weights, and summarise trajectories into metrics.

Engine memory around the update: `generate` puts the engine to sleep once its rollouts are
done (vLLM: level 2, the KV cache and the weights freed while the trainer recomputes
log-probs and steps the optimizer: the push overwrites every weight) and `push_weights` wakes
its weights, streams the new ones in and wakes its KV cache last. Engines without a sleep mode
stay awake; the reason is logged once per engine."""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from dataclasses import replace

import torch

from aster.rollout import rollout_metrics, run_rollouts
from aster.rollout.factory import build_engine
from aster.rollout.vllm_engine import concurrency_at
from aster.train.precision import dtype_name

log = logging.getLogger("aster")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def trajectory_stats(ctx, trajs) -> dict:
    """Reward, accuracy, tool calls (mean, p50, p90), response length, finish reasons;
    averaged over all ranks' trajectories."""
    calls = [float(t.num_tool_calls) for t in trajs]
    rewards = [float(t.reward) for t in trajs]
    lengths = [float(len(t.response_ids)) for t in trajs]
    sums = torch.tensor([sum(rewards), sum(r >= 1.0 for r in rewards), sum(calls), sum(lengths),
                         float(len(trajs))], dtype=torch.float64)
    sums = ctx.all_reduce_sum(sums)
    n = max(1.0, sums[4].item())
    stats = {"reward_mean": sums[0].item() / n, "accuracy": sums[1].item() / n,
             "tool_calls_mean": sums[2].item() / n, "response_len_mean": sums[3].item() / n,
             "tool_calls_p50": _quantile(calls, 0.5), "tool_calls_p90": _quantile(calls, 0.9),
             "trajectories": int(n)}
    reasons = Counter(str(t.finish_reason) for t in trajs)
    stats["finish_sandbox_unavailable"] = 0.0  # always logged: a nonzero rate is the sandbox's
    for reason, count in reasons.items():
        stats[f"finish_{reason}"] = count / max(1, len(trajs))
    return stats


def response_budgets(cfg) -> dict[str, int]:
    """The response budget (tokens, tool output included) of every stage of the run that
    rolls out: the RL stages and evaluation; rollout.max_response_tokens when none does."""
    budgets = {}
    for stage in cfg.run.stages:
        if stage in ("rl_stage1", "rl_stage2"):
            budgets[stage] = getattr(cfg.rl, stage.removeprefix("rl_")).max_response_tokens
        elif stage == "eval":
            budgets[stage] = cfg.eval.max_tokens
    return budgets or {"rollout": cfg.rollout.max_response_tokens}


def model_context(model_path: str) -> int | None:
    """The checkpoint's own context length (max_position_embeddings), if it says."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None


def run_max_model_len(cfg, model_path: str | None = None) -> int:
    """The engine's max_model_len for this run: rollout.max_prompt_tokens + the largest
    response budget it uses, at most the checkpoint's context (vLLM refuses a longer one; the
    budgets still end trajectories). Without it vLLM takes the model's whole context (262,144
    for Qwen3-4B-Thinking-2507: 36 GiB of KV for one sequence)."""
    budgets = response_budgets(cfg)
    length = cfg.rollout.max_prompt_tokens + max(budgets.values())
    limit = model_context(model_path) if model_path else None
    if limit and length > limit:
        log.info("rollout engine: max_model_len %d (prompt %d + %s) capped at the model's "
                 "context %d", length, cfg.rollout.max_prompt_tokens, budgets, limit)
        return limit
    return length


def make_engine(ctx, model_dir: str, max_model_len: int | None = None):
    """The rollout engine the backend names, loaded from `model_dir`, sized for the run's
    budgets unless `max_model_len` is given."""
    return build_engine(ctx.backend, model_dir, ctx.cfg.rollout,
                        dtype=dtype_name(ctx.compute_dtype), tokenizer=ctx.tokenizer,
                        max_model_len=max_model_len or run_max_model_len(ctx.cfg, model_dir))


_BUDGETS_LOGGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def log_concurrency(engine, prompt_tokens: int, response_tokens: int) -> None:
    """Once per engine and budget: how many sequences of this budget the engine holds."""
    seen = _BUDGETS_LOGGED.setdefault(engine, set())
    if not engine.capacity or response_tokens in seen:
        return
    seen.add(response_tokens)
    tokens = prompt_tokens + response_tokens
    log.info("rollout engine at a %d-token response budget (%d with the prompt): up to %s "
             "sequences at full length at once (max_num_seqs %d)", response_tokens, tokens,
             concurrency_at(engine.capacity, tokens) or "unknown",
             engine.capacity["max_num_seqs"])


class SharedEngine:
    """The run's one rollout engine, built at its first use (from that stage's model) and
    reused by every later stage and evaluation, which load their weights into it. vLLM's
    sleep mode serves one engine per process (a second one asserts), and building an engine
    per stage would also pay its start-up each time."""

    def __init__(self):
        self.engine = None

    def get(self, ctx, model_dir: str):
        """The engine, built now from `model_dir` if this is its first use."""
        if self.engine is None:
            self.engine = make_engine(ctx, model_dir)
        return self.engine

    def idle(self) -> None:
        """Between uses (a stage's model loading and training come next): asleep if it can."""
        if self.engine is not None and not self.engine.asleep:
            sleep_engine(self.engine)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


_AWAKE_LOGGED: weakref.WeakSet = weakref.WeakSet()  # engines whose no-sleep reason was logged


def sleep_engine(engine) -> bool:
    """Put the engine to sleep for the update if it can; True when it did."""
    if engine.supports_sleep:
        engine.sleep()
        return True
    if engine not in _AWAKE_LOGGED:
        log.info("rollout engine %s stays awake during updates: %s", engine.name,
                 engine.sleep_note)
        _AWAKE_LOGGED.add(engine)
    return False


def engine_weights(ctx) -> dict:
    """The trained weights as the engine takes them: in full (sharded ones gathered one tensor
    at a time; a collective when sharded) and in the compute dtype (the masters are fp32)."""
    return {name: tensor for bucket in ctx.strategy.weight_buckets(WHOLE, ctx.hf_model)
            for name, tensor in bucket}


WHOLE = 2 ** 62  # a bucket size no model reaches: one bucket


def push_weights(ctx, engine) -> None:
    """Stream the trained weights into the engine in the order its memory allows: the
    training allocator's cached blocks released, the engine's weights woken alone (its KV
    cache still asleep), the weights sent one bucket at a time (`rollout.weight_bucket_mb`,
    compute dtype, each tensor made full on its own by the strategy), each bucket
    dropped once loaded, the cache released again, and only then the KV cache woken. At no
    point does a full copy of the weights sit beside the engine. Collective when sharded."""
    bucket_bytes = ctx.cfg.rollout.weight_bucket_mb * 2**20
    if engine.supports_sleep:
        ctx.backend.empty_cache()  # the update's blocks, before the engine maps its weights
    engine.begin_push()  # wakes the weights alone; a no-op wake when awake
    for bucket in ctx.strategy.weight_buckets(bucket_bytes, ctx.hf_model):
        engine.push_bucket(bucket)
        bucket.clear()  # the generator's own reference goes when it resumes
    engine.end_push()
    if engine.supports_sleep:
        ctx.backend.empty_cache()  # the buckets' blocks, before the KV cache takes its memory
    engine.wake_cache()


def generate(ctx, engine, prompts: list[dict], samples: int, max_response_tokens: int,
             seed: int) -> tuple[list, dict]:
    """`samples` trajectories per prompt (prompt-major) and the rollout metrics; the engine is
    left asleep (where it can sleep) for the update that follows."""
    cfg = replace(ctx.cfg.rollout, max_response_tokens=max_response_tokens)
    log_concurrency(engine, cfg.max_prompt_tokens, max_response_tokens)
    stats: dict = {}
    trajs = run_rollouts(engine, ctx.pool, prompts, cfg, tokenizer=ctx.tokenizer,
                         samples_per_prompt=samples, seed=seed, stats=stats)
    sleep_engine(engine)  # until push_weights: the update comes next
    m = rollout_metrics(trajs, stats)
    return trajs, {"time_tools_s": m.get("tool_s", 0.0), "time_generate_s": m.get("gen_s", 0.0),
                   "tool_error_rate": m["tool_error_rate"],
                   "tool_exec_error_rate": m["tool_exec_error_rate"],
                   "turns_mean": m["turns_mean"]}
