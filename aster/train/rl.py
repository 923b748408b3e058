"""GRPO: one step is rollouts -> rewards -> group advantages -> old log-probs -> ppo_epochs x
mini batches x micro batches of the clipped policy loss (global token count) -> optimizer
step -> weights pushed to the rollout engine. A stage is a sequence of such steps over a
prompt set; `aster train` runs stage 1, the all-correct filter, then stage 2."""

from __future__ import annotations

import json
import logging
import math
import time
import zlib

import torch

from aster.algo import (
    build_micro_batch,
    gather_tokens,
    group_advantages,
    local_token_count,
    micro_batch_loss,
    mini_batches,
    policy_logprobs,
    shard_for_rank,
    split_indices,
    token_advantages,
)
from aster.metrics import CollapseMonitor
from aster.train.checkpoint import save_checkpoint
from aster.train.common import build_optimizer, build_scheduler
from aster.train.replay import finish_step, step_rollouts
from aster.train.rollouts import push_weights, trajectory_stats
from aster.train.sft import _resume

log = logging.getLogger("aster")


def step_prompts(prompts: list[dict], step: int, per_step: int, seed: int) -> tuple[int, list]:
    """(epoch, prompt indices) of global step `step`: a seeded shuffle per epoch, consecutive
    slices of `per_step` prompts; the last slice of an epoch wraps around to stay full."""
    per_epoch = max(1, len(prompts) // per_step)
    epoch, idx = divmod(step, per_epoch)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(
        seed * 7919 + epoch)).tolist()
    chosen = [order[(idx * per_step + i) % len(order)] for i in range(per_step)]
    return epoch, chosen


def stage_total_steps(num_prompts: int, rl_cfg, stage_cfg) -> int:
    per_epoch = max(1, num_prompts // rl_cfg.prompts_per_step)
    total = per_epoch * stage_cfg.epochs
    return min(total, stage_cfg.max_steps) if stage_cfg.max_steps else total


def old_logprobs(ctx, trajs, temperature: float, with_entropy: bool):
    """Per-trajectory log-probs of the trained tokens under the current policy (no grad),
    and the mean entropy over them."""
    rl = ctx.cfg.rl
    out, ent_sum, n = [None] * len(trajs), 0.0, 0
    with torch.no_grad():
        for idx in split_indices(len(trajs), rl.micro_batch_size):
            mb = _micro(ctx, trajs, idx)
            res = policy_logprobs(ctx.policy, mb, temperature, return_entropy=with_entropy)
            logp, ent = res if with_entropy else (res, None)
            for k, i in enumerate(idx):
                out[i] = _scatter(logp, mb, k, len(trajs[i].loss_mask))
            if ent is not None:
                ent_sum, n = ent_sum + float(ent.sum()), n + ent.numel()
    return out, (ent_sum / n if n else None)


def _scatter(flat, mb, k, width):
    """Trajectory k's trained-token values as a [response_len] tensor (0 where masked)."""
    vals = torch.zeros(width)
    sel = (mb.traj_of_token == k).cpu()
    vals[mb.resp_index.cpu()[sel]] = flat.detach().float().cpu()[sel]
    return vals


def _micro(ctx, trajs, idx):
    pad = ctx.tokenizer.pad_token_id or 0
    return build_micro_batch([trajs[i].prompt_ids for i in idx],
                             [trajs[i].response_ids for i in idx],
                             [trajs[i].loss_mask for i in idx], pad, ctx.backend.device())


def policy_update(ctx, trajs, adv_tokens, old_lp, where, last_good):
    """ppo_epochs x mini batches x micro batches; one optimizer step per mini batch, through
    ctx.updater (the stage's optimizer and schedule under the parallel strategy, built by
    `_resume`)."""
    rl, updater = ctx.cfg.rl, ctx.updater
    temperature = ctx.cfg.rollout.temperature or 1.0
    rollout_lp = [torch.as_tensor(t.rollout_logprobs, dtype=torch.float32) for t in trajs]
    masks = [t.loss_mask for t in trajs]
    n_mini = rl.prompts_per_step // rl.mini_batch_prompts
    local_groups = len(trajs) // rl.group_size
    stats = {"loss": 0.0, "grad_norm": 0.0, "clip_frac_upper": 0.0, "clip_frac_lower": 0.0,
             "approx_kl": 0.0, "updates": 0}
    for _ in range(rl.ppo_epochs):
        for mini in mini_batches(len(trajs), rl.group_size, max(1, math.ceil(local_groups / n_mini))):
            count = ctx.all_reduce_sum(torch.tensor([float(local_token_count(masks, mini))],
                                                    dtype=torch.float64)).item()
            sums = torch.zeros(4, dtype=torch.float64)
            for chunk in updater.accumulate(split_indices(len(mini), rl.micro_batch_size)):
                idx = [mini[c] for c in chunk]
                mb = _micro(ctx, trajs, idx)
                logp = policy_logprobs(ctx.policy, mb, temperature)
                loss, m = micro_batch_loss(
                    logp, gather_tokens(old_lp, mb, idx), gather_tokens(adv_tokens, mb, idx),
                    num_tokens=count, clip_low=rl.clip_low, clip_high=rl.clip_high,
                    clip_c=rl.clip_c, rollout_logp=gather_tokens(rollout_lp, mb, idx),
                    tis_cap=rl.tis_cap, kernel_impl=ctx.backend.kernel_impl)
                updater.backward(loss)
                sums += torch.tensor([loss.item(), float(m["clip_frac_upper"]),
                                      float(m["clip_frac_lower"]), float(m["approx_kl"])],
                                     dtype=torch.float64)
            sums = ctx.all_reduce_sum(sums)
            gn = updater.step(sums[0].item(), where, last_good)
            for k, v in zip(("loss", "clip_frac_upper", "clip_frac_lower", "approx_kl"),
                            sums.tolist()):
                stats[k] += v
            stats["grad_norm"] += gn
            stats["updates"] += 1
    n = max(1, stats.pop("updates"))
    return {k: v / n for k, v in stats.items()}


def rl_step(ctx, engine, prompts, stage: str, stage_cfg, step: int,
            last_good) -> tuple[dict, list[dict]]:
    """One GRPO step; returns its metrics and the per-prompt records for the filter."""
    rl, dist = ctx.cfg.rl, ctx.dist
    epoch, chosen = step_prompts(prompts, step, rl.prompts_per_step, ctx.cfg.run.seed)
    mine = shard_for_rank(chosen, dist.rank, dist.world_size)
    t0 = time.perf_counter()
    seed = ctx.cfg.run.seed * 1_000_003 + zlib.crc32(stage.encode()) % 1000 * 10_007 + step * 101 + dist.rank
    trajs, roll_metrics, trace = step_rollouts(ctx, engine, prompts, mine, stage, step,
                                               stage_cfg.max_response_tokens, seed)
    t_roll = time.perf_counter()
    rewards = [float(t.reward) for t in trajs]
    adv = group_advantages(rewards, rl.group_size, std_norm=rl.adv_std_norm, eps=rl.adv_eps,
                           std=rl.adv_std)
    adv_tokens = token_advantages(adv.adv, [t.loss_mask for t in trajs])
    temperature = ctx.cfg.rollout.temperature or 1.0
    if rl.old_logp == "recompute":
        old_lp, entropy = old_logprobs(ctx, trajs, temperature, with_entropy=True)
    else:
        old_lp = [torch.as_tensor(t.rollout_logprobs, dtype=torch.float32) for t in trajs]
        entropy = None
    t_old = time.perf_counter()
    where = f"{stage} step {step + 1}"
    lr = ctx.updater.lr
    upd = policy_update(ctx, trajs, adv_tokens, old_lp, where, last_good)
    t_train = time.perf_counter()
    push_weights(ctx, engine)
    t_sync = time.perf_counter()
    finish_step(ctx, trace, adv.adv, old_lp, upd)  # the dump/replay parity record, if any
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    metrics = {**trajectory_stats(ctx, trajs), **roll_metrics, **upd, "lr": lr, "epoch": epoch,
               "zero_adv_groups": adv.num_zero_groups, "groups": adv.num_groups,
               "entropy": entropy, "time_rollout_s": t_roll - t0,
               "time_train_s": t_train - t_roll, "time_old_logp_s": t_old - t_roll,
               "time_update_s": t_train - t_old, "time_weight_sync_s": t_sync - t_train,
               "tokens_per_s": tokens / max(1e-9, t_train - t0), **ctx.backend.memory_stats()}
    records = _prompt_records(mine, trajs, rl.group_size,
                              epoch, step + 1)
    return metrics, records


def _prompt_records(indices, trajs, group_size, epoch, step) -> list[dict]:
    out = []
    for g, pid in enumerate(indices):
        group = trajs[g * group_size:(g + 1) * group_size]
        out.append({"prompt": pid, "epoch": epoch, "step": step,
                    "rewards": [float(t.reward) for t in group],
                    "tool_calls": [int(t.num_tool_calls) for t in group]})
    return out


def run_rl_stage(ctx, engine, prompts: list[dict], stage: str, stage_cfg) -> dict:
    """All steps of one RL stage with resume, checkpoints, metrics, the collapse monitor and
    the per-prompt rollout records (run_dir/rollouts/<stage>.jsonl) that the filter reads."""
    rl, dist = ctx.cfg.rl, ctx.dist
    total = stage_total_steps(len(prompts), rl, stage_cfg)
    optimizer = build_optimizer(ctx.policy, rl.lr, rl.weight_decay)
    scheduler = build_scheduler(optimizer, total, rl.warmup_steps, "constant")
    start, last_good = _resume(ctx, stage, optimizer, scheduler)
    records_path = ctx.run_dir / "rollouts" / f"{stage}.jsonl"
    _truncate_records(records_path, start, dist.is_main)
    monitor = CollapseMonitor(rl.collapse_monitor)
    for m in _previous_metrics(ctx, stage):
        monitor.update(m["tool_calls_mean"], m["reward_mean"])
    push_weights(ctx, engine)
    metrics: dict = {}
    for step in range(start, total):
        metrics, records = rl_step(ctx, engine, prompts, stage, stage_cfg, step, last_good)
        metrics.update(monitor.update(metrics["tool_calls_mean"], metrics["reward_mean"]))
        _append_records(ctx, records_path, records)
        ctx.writer.write(stage, step + 1, metrics)
        if (step + 1) % ctx.cfg.checkpoint.every_steps == 0 or step + 1 == total:
            last_good = str(save_checkpoint(
                ctx.ckpt_dir(stage), step + 1, model=ctx.policy, optimizer=optimizer,
                scheduler=scheduler, extra={"stage": stage, "epoch": metrics["epoch"]},
                keep_last=ctx.cfg.checkpoint.keep_last, is_main=dist.is_main))
    return metrics


def _append_records(ctx, path, records) -> None:
    if ctx.dist.world_size > 1:
        import torch.distributed as tdist

        gathered = [None] * ctx.dist.world_size
        tdist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    if ctx.dist.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


def _truncate_records(path, step: int, is_main: bool) -> None:
    if not is_main or not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step]
    path.write_text("".join(f"{line}\n" for line in keep))


def _previous_metrics(ctx, stage: str) -> list[dict]:
    from aster.metrics import read_metrics

    return [m for m in read_metrics(ctx.run_dir) if m.get("stage") == stage]


def all_correct_prompts(records: list[dict], group_size: int | None = None) -> set[int]:
    """Prompts answered correctly by every sample (G/G) in the last epoch they were seen."""
    last_epoch = max((r["epoch"] for r in records), default=0)
    out = set()
    for r in records:
        if r["epoch"] != last_epoch:
            continue
        n = len(r["rewards"])
        if (group_size is None or n == group_size) and all(x >= 1.0 for x in r["rewards"]):
            out.add(r["prompt"])
    return out


def filter_prompts(prompts: list[dict], records_path) -> tuple[list[dict], int]:
    """Stage 2's prompt set: `prompts` minus those answered G/G during the stage-1 last epoch
    recorded in `records_path` (a rollouts/<stage>.jsonl). Returns (kept, dropped count)."""
    from pathlib import Path

    path = Path(records_path)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []
    drop = all_correct_prompts(records)
    kept = [p for i, p in enumerate(prompts) if i not in drop]
    return kept, len(prompts) - len(kept)
