"""GRPO: one step is rollouts -> rewards -> group advantages -> the balanced plan (trajectories
to ranks and token-budget micro batches, aster.train.rl_batches) -> old (and reference)
log-probs -> ppo_epochs x mini batches x micro batches of the objective rl.loss names
(aster.algo.losses; normalised by the mini batch's global counts) -> optimizer step -> weights
pushed to the rollout engine. A stage is a sequence of such steps over a prompt set; `aster train` runs
stage 1, the all-correct filter, then stage 2."""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as tdist

from aster.algo import (
    Penalties,
    build_objective,
    gather_tokens,
    group_advantages,
    micro_batch_loss,
    mini_batch_counts,
    policy_logprobs,
    shard_for_rank,
)
from aster.algo.packing import use_packing
from aster.metrics import CollapseMonitor, read_metrics
from aster.train.checkpoint import save_checkpoint
from aster.train.common import build_optimizer, build_scheduler
from aster.train.reference import build_reference_policy
from aster.train.replay import finish_step, step_rollouts
from aster.train.rl_batches import micro_batches, plan_step, to_origin
from aster.train.rollout_wait import wait_for_rollouts
from aster.train.rollouts import push_weights, trajectory_stats
from aster.train.stage import TrainStage, open_stage
from aster.train.stages import check_records_match

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


def stage_parts(ctx, stage_cfg) -> dict:
    """The RL stage's objective (rl.loss), its KL / entropy terms and, with rl.kl_coef > 0,
    the frozen reference policy of ctx.model_dir: {"objective", "penalties", "ref_policy"}."""
    rl = ctx.cfg.rl
    objective = build_objective(rl, kernel_impl=ctx.backend.kernel_impl,
                                max_response_tokens=stage_cfg.max_response_tokens)
    penalties = Penalties.from_config(rl)
    use_packing(rl.packing, ctx.backend, "rl.packing")  # logs what the attention does
    ref_policy = None
    if rl.kl_coef:
        ref_policy = build_reference_policy(ctx)
    return {"objective": objective, "penalties": penalties, "ref_policy": ref_policy}


def start_rl_stage(ctx, stage: str, stage_cfg, total_steps: int, *, optimizer=None,
                   weight_decay: float | None = None,
                   warmup_steps: int | None = None) -> TrainStage:
    """The whole set-up of an RL stage, the one sequence the trainer, tests and benches use:
    its objective, penalties and reference policy (stage_parts), AdamW from rl.* (or
    `optimizer`), the constant schedule after warmup, the Updater and the resume
    (aster.train.stage.open_stage). Returns the stage."""
    rl = ctx.cfg.rl
    parts = stage_parts(ctx, stage_cfg)
    if optimizer is None:
        optimizer = build_optimizer(ctx.policy, rl.lr,
                                    rl.weight_decay if weight_decay is None else weight_decay)
    warmup = rl.warmup_steps if warmup_steps is None else warmup_steps
    scheduler = build_scheduler(optimizer, total_steps, warmup, "constant")
    return open_stage(ctx, stage, rl, optimizer, scheduler, **parts)


def old_logprobs(ctx, plan, temperature: float, with_entropy: bool, policy=None):
    """{key: [response_len] log-probs of the trained tokens (0 where masked)} of this rank's
    planned trajectories under `policy` (default: the current policy; ctx.ref_policy for the
    KL penalty), no grad, over the plan's micro batches; and with `with_entropy` the mean
    entropy over every rank's trained tokens (a collective), else None."""
    policy = ctx.policy if policy is None else policy
    out: dict = {}
    ent = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for mini in plan.minis:
            for keys, build in micro_batches(ctx, plan, mini):
                mb = build()
                res = policy_logprobs(policy, mb, temperature, return_entropy=with_entropy)
                logp, entropy = res if with_entropy else (res, None)
                _store(out, logp, mb, keys, plan)
                if entropy is not None:
                    ent += torch.tensor([float(entropy.double().sum()), entropy.numel()],
                                        dtype=torch.float64)
    if not with_entropy:
        return out, None
    ent = ctx.all_reduce_sum(ent)
    return out, (float(ent[0] / ent[1]) if ent[1] else None)


def trajectory_logprobs(ctx, trajs, temperature: float, policy=None) -> list:
    """Per-trajectory log-probs of this rank's `trajs` (in their order) under `policy`,
    computed on the balanced plan (a collective: every rank calls it with its trajectories)."""
    plan = plan_step(ctx, trajs, torch.zeros(len(trajs)))
    logp, _ = old_logprobs(ctx, plan, temperature, False, policy=policy)
    return to_origin(ctx, plan, logp)


def _store(out: dict, flat, mb, keys, plan) -> None:
    """Each trajectory's trained-token values of a micro batch as a [response_len] tensor (0
    where masked) under its key. The flat tokens come in trajectory order."""
    flat = flat.detach().float().cpu()
    counts = torch.bincount(mb.traj_of_token.cpu(), minlength=len(keys)).tolist()
    index = mb.resp_index.cpu()
    start = 0
    for key, count in zip(keys, counts):
        vals = torch.zeros(len(plan.samples[key].loss_mask))
        vals[index[start:start + count]] = flat[start:start + count]
        out[key] = vals
        start += count


def policy_update(ctx, plan, old_lp, where, last_good, ref_lp=None):
    """ppo_epochs x the plan's mini batches x their micro batches of ctx.objective
    (+ ctx.penalties); one optimizer step per mini batch through ctx.updater (the stage's
    optimizer and schedule under the parallel strategy, built by `start_rl_stage`). `old_lp`: the old
    policy's log-probs by key, or None on-policy (exactly one update: the update's own
    log-probs, detached, are the old ones). `ref_lp`: the reference policy's (rl.kl_coef > 0).
    Returns (the loss, grad norm and every metric the objective reports, averaged over the
    updates, `*_max` the maximum; the log-probs the first epoch computed, by key, when
    on-policy, else None)."""
    rl, updater = ctx.cfg.rl, ctx.updater
    temperature = ctx.cfg.rollout.temperature or 1.0
    samples = plan.samples
    if old_lp is None and len(plan.minis) * rl.ppo_epochs != 1:
        raise ValueError(f"on-policy old log-probs need exactly one update per step; this one "
                         f"makes {len(plan.minis) * rl.ppo_epochs}")
    rollout_lp = {k: torch.as_tensor(s.rollout_logprobs, dtype=torch.float32)
                  for k, s in samples.items()} if ctx.objective.tis_cap is not None else None
    masks = {k: s.loss_mask for k, s in samples.items()}
    adv_tokens = {k: torch.as_tensor(s.loss_mask, dtype=torch.float32) * s.adv
                  for k, s in samples.items()}
    stats, updates, seen = {}, 0, ({} if old_lp is None else None)
    for _ in range(rl.ppo_epochs):
        for mini in plan.minis:
            counts = mini_batch_counts(masks, [k for micro in mini for k in micro],
                                       ctx.all_reduce_sum)
            sums: dict = {}
            for keys, build in updater.accumulate(micro_batches(ctx, plan, mini)):
                mb = build()
                loss, m, logp = _micro_loss(ctx, mb, keys, counts, temperature, old_lp,
                                            adv_tokens, rollout_lp, ref_lp)
                updater.backward(loss)
                if seen is not None:
                    _store(seen, logp, mb, keys, plan)
                _accumulate(sums, {"loss": loss.detach(), **m})
            reduced = reduce_metrics(ctx, sums)
            reduced["grad_norm"] = updater.step(reduced["loss"], where, last_good)
            _accumulate(stats, reduced)
            updates += 1
    return {k: v if k.endswith("_max") else v / max(1, updates) for k, v in stats.items()}, seen


def _micro_loss(ctx, mb, keys, counts, temperature, old_lp, adv_tokens, rollout_lp, ref_lp):
    """One micro batch's forward and loss (objective + penalties), normalised globally:
    (loss, metrics, detached log-probs). Without penalties an objective with a fused form
    (grpo) computes its loss and gradients in the log-prob sweep itself (3 lm_head matmuls,
    not 4)."""
    penalties, objective = ctx.penalties, ctx.objective
    old = gather_tokens(old_lp, mb, keys) if old_lp is not None else None
    adv = gather_tokens(adv_tokens, mb, keys)
    rollout = gather_tokens(rollout_lp, mb, keys) if rollout_lp is not None else None
    head = None if penalties.active else objective.fused_head(
        old, adv, mb.traj_of_token, counts.tokens, num_seqs=counts.seqs, rollout_logp=rollout,
        temperature=temperature)
    if head is not None:
        return policy_logprobs(ctx.policy, mb, temperature, head=head)
    res = policy_logprobs(ctx.policy, mb, temperature,
                          return_entropy=bool(penalties.entropy_coef))
    logp, entropy = res if penalties.entropy_coef else (res, None)
    loss, metrics = micro_batch_loss(
        objective, logp, logp.detach() if old is None else old, adv, mb.traj_of_token, counts,
        penalties=penalties, rollout_logp=rollout,
        ref_logp=gather_tokens(ref_lp, mb, keys) if ref_lp is not None else None,
        entropy=entropy)
    return loss, metrics, logp.detach()


def _accumulate(acc: dict, metrics: dict) -> None:
    """Add metrics into acc (floats); `*_max` keys keep the maximum."""
    for key, value in metrics.items():
        value = float(value)
        if key.endswith("_max"):
            acc[key] = max(acc.get(key, value), value)
        else:
            acc[key] = acc.get(key, 0.0) + value


def reduce_metrics(ctx, sums: dict) -> dict:
    """Sum each metric over ranks (`*_max`: the maximum) in one all_reduce_sum: each rank
    writes its maxima into its own slots of a [world_size x maxima] block, so the sum holds
    every rank's value. Every rank passes the same keys (the same objective and config)."""
    keys = sorted(sums)
    add = [k for k in keys if not k.endswith("_max")]
    top = [k for k in keys if k.endswith("_max")]
    world, rank = ctx.dist.world_size, ctx.dist.rank
    block = torch.zeros(world, len(top), dtype=torch.float64)
    block[rank] = torch.tensor([sums[k] for k in top], dtype=torch.float64)
    flat = torch.cat([torch.tensor([sums[k] for k in add], dtype=torch.float64),
                      block.reshape(-1)])
    flat = ctx.all_reduce_sum(flat)
    out = dict(zip(add, flat[:len(add)].tolist()))
    if top:
        out.update(zip(top, flat[len(add):].reshape(world, len(top)).max(dim=0).values.tolist()))
    return out


def skip_old_logp(rl) -> bool:
    """rl.old_logp=auto skips the no-grad old-policy forward when a step makes exactly one
    optimizer update on its fresh rollouts (one mini batch, one PPO epoch): the old policy is
    then the current one, the ratio is 1 by construction and the update's forward gives the
    old log-probs (detached)."""
    return rl.old_logp == "auto" and rl.ppo_epochs == 1 \
        and rl.mini_batch_prompts == rl.prompts_per_step


def learn_from_rollouts(ctx, trajs, where: str, last_good, keep_old_lp: bool = True) -> dict:
    """Everything a GRPO step does after its rollouts, from this rank's trajectories: group
    advantages, the balanced plan (trajectories moved to the ranks and micro batches that
    train them), old log-probs (recomputed; the rollout's with rl.old_logp=rollout; the
    update's own when rl.old_logp=auto skips the recompute), the reference policy's log-probs
    (rl.kl_coef > 0), the policy update. Returns {"adv": GroupAdvantages, "old_lp": this
    rank's trajectories' old log-probs in their order (None unless keep_old_lp), "metrics":
    the update's, the plan's and the phases' times}."""
    rl = ctx.cfg.rl
    t0 = time.perf_counter()
    adv = group_advantages([float(t.reward) for t in trajs], rl.group_size,
                           std_norm=rl.adv_std_norm, eps=rl.adv_eps, std=rl.adv_std)
    plan = plan_step(ctx, trajs, adv.adv)
    temperature = ctx.cfg.rollout.temperature or 1.0
    entropy = None
    if rl.old_logp == "rollout":
        old_lp = {k: torch.as_tensor(s.rollout_logprobs, dtype=torch.float32)
                  for k, s in plan.samples.items()}
    elif skip_old_logp(rl):
        old_lp = None
    else:
        old_lp, entropy = old_logprobs(ctx, plan, temperature, with_entropy=True)
    ref_lp = None
    if ctx.ref_policy is not None:
        ref_lp, _ = old_logprobs(ctx, plan, temperature, False, policy=ctx.ref_policy)
    t_old = time.perf_counter()
    upd, seen = policy_update(ctx, plan, old_lp, where, last_good, ref_lp)
    t_update = time.perf_counter()
    old_lp = old_lp if old_lp is not None else seen
    return {"adv": adv, "old_lp": to_origin(ctx, plan, old_lp) if keep_old_lp else None,
            "metrics": {**upd, **plan.stats, "entropy": entropy,
                        "time_old_logp_s": t_old - t0, "time_update_s": t_update - t_old}}


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
    wait = wait_for_rollouts(dist, time.perf_counter() - t0, f"{stage} step {step + 1}")
    t_roll = time.perf_counter()
    lr = ctx.updater.lr
    learned = learn_from_rollouts(ctx, trajs, f"{stage} step {step + 1}", last_good,
                                  keep_old_lp=trace is not None)
    t_train = time.perf_counter()
    push_weights(ctx, engine)
    t_sync = time.perf_counter()
    upd = learned["metrics"]
    # the dump/replay parity record, if any
    finish_step(ctx, trace, learned["adv"].adv, learned["old_lp"], upd)
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    adv = learned["adv"]
    metrics = {**trajectory_stats(ctx, trajs), **roll_metrics, **upd, "lr": lr, "epoch": epoch,
               "zero_adv_groups": adv.num_zero_groups, "groups": adv.num_groups,
               "time_rollout_s": t_roll - t0, "time_train_s": t_train - t_roll,
               "time_weight_sync_s": t_sync - t_train,
               "tokens_per_s": tokens / max(1e-9, t_train - t0), **wait,
               **ctx.backend.memory_stats()}
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
    ctx = start_rl_stage(ctx, stage, stage_cfg, total)  # the stage, over the model's context
    start, last_good = ctx.start, ctx.last_good
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
                ctx.ckpt_dir(stage), step + 1, model=ctx.policy, optimizer=ctx.optimizer,
                scheduler=ctx.scheduler, extra={"stage": stage, "epoch": metrics["epoch"]},
                keep_last=ctx.cfg.checkpoint.keep_last, is_main=dist.is_main))
    return metrics


def _append_records(ctx, path, records) -> None:
    if ctx.dist.world_size > 1:
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
    path = Path(records_path)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []
    check_records_match(records, len(prompts), path)
    drop = all_correct_prompts(records)
    kept = [p for i, p in enumerate(prompts) if i not in drop]
    return kept, len(prompts) - len(kept)
