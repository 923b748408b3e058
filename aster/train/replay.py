"""Rollout dump and replay: align two machines or backends on the same trajectories.

The way engineers align a run on one accelerator family with a run on another: generation is
sampled, so two runs never see the same trajectories; dump one run's rollouts and replay them
on the other with the rollout skipped, and every number downstream (old log-probs, loss, grad
norm, updated weights) must agree within the tolerances of aster.parity_record.

- `rl.dump_rollouts_dir=DIR` (`aster rl|train --dump-rollouts DIR`): every GRPO step writes the
  trajectories it trained on (prompt and response token ids, loss masks, rewards, rollout
  log-probs, group size) with the step's metadata (stage, step, rollout seed, world size,
  tokenizer, config digest).
- `rl.replay_rollouts_dir=DIR` (`--replay-rollouts DIR`): generation is skipped; each step
  loads the dumped trajectories of the same stage and step and trains on them.
- Either way the step writes a parity record (kind `rl_step`) to
  `run_dir/parity/<stage>/stepNNNNNN.json` (the dumping run also copies it into DIR), which
  `aster parity compare A B` compares: the inputs (exactly), the weights before the step, the
  old log-probs of the trained tokens (per token, per trajectory, checksums), the loss, the
  grad norm and clip fractions, and checksums of the updated weights.

DIR layout, one directory per step (files written atomically: temp file, then rename):
    <stage>/stepNNNNNN/rankR.pt      rank R's trajectories (torch.save; loaded weights_only)
    <stage>/stepNNNNNN/meta.json     the step's metadata, human-readable
    <stage>/stepNNNNNN/record.json   the dumping run's parity record of the step
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist

from aster.configio import to_dict
from aster.errors import AsterUserError
from aster.parity_record import weight_checksums, write_record
from aster.rollout import rollout_metrics
from aster.rollout.agent import Trajectory
from aster.train.checkpoint import write_text_atomic
from aster.train.precision import dtype_name
from aster.train.rollouts import generate
from aster.train.strategy import strategy_class

log = logging.getLogger("aster")

DUMP_VERSION = 1
MAX_TOKEN_VALUES = 65536  # per-token log-probs go into the record up to this many tokens
_SCALARS = ("num_tool_calls", "tool_errors", "exec_errors", "num_turns", "finish_reason",
            "answer", "ground_truth", "reward", "prompt_index", "sample_index")


class ReplayError(AsterUserError):
    """A rollout dump cannot be replayed as asked (missing, another tokenizer, group size...)."""


@dataclass
class StepTrace:
    """What the record of a dumped or replayed step needs from before the update."""

    source: str  # "dump" or "replay"
    stage: str
    step: int  # 1-based, as in metrics.jsonl
    meta: dict
    trajs: list
    weights_before: dict


def step_dir(root, stage: str, step: int) -> Path:
    """Where step `step` (1-based) of `stage` lives in a dump directory."""
    return Path(root) / stage / f"step{step:06d}"


def record_path(run_dir, stage: str, step: int) -> Path:
    """Where a run writes the parity record of a dumped or replayed step."""
    return Path(run_dir) / "parity" / stage / f"step{step:06d}.json"


# ---- checks before anything is written -------------------------------------------------------
def check_rollout_dirs(cfg) -> None:
    """One-line errors for dump / replay directories that cannot be used (called before the
    run directory is created)."""
    rl = cfg.rl
    strategy_class(cfg.distributed.strategy).check_config(cfg)  # what the strategy cannot do
    if rl.dump_rollouts_dir and Path(rl.dump_rollouts_dir).exists() \
            and not Path(rl.dump_rollouts_dir).is_dir():
        raise ReplayError(f"--dump-rollouts {rl.dump_rollouts_dir}: exists and is not a "
                          "directory; give a directory (it is created if missing)")
    if not rl.replay_rollouts_dir:
        return
    root = Path(rl.replay_rollouts_dir)
    if not root.is_dir():
        raise ReplayError(f"--replay-rollouts {root}: no such directory; give the DIR a run "
                          "wrote with --dump-rollouts DIR")
    metas = sorted(root.glob("*/step*/meta.json"))
    if not metas:
        raise ReplayError(f"--replay-rollouts {root}: holds no dumped step (no "
                          "<stage>/stepNNNNNN/meta.json); give the DIR of --dump-rollouts")
    _check_group_size(_read_meta(metas[0]), rl.group_size, metas[0].parent)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReplayError(f"{path}: unreadable dump metadata ({exc}); dump the step again") \
            from None


def _check_group_size(meta: dict, group_size: int, where) -> None:
    if meta["group_size"] != group_size:
        raise ReplayError(f"{where} was dumped with group size {meta['group_size']} but "
                          f"rl.group_size={group_size}; replay with rl.group_size="
                          f"{meta['group_size']}")


# ---- metadata --------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_view(cfg) -> dict:
    """The config keys the training step depends on, beyond the trajectories themselves (the
    device, kernels, paths and parallelism may differ between the two runs)."""
    rl = {k: v for k, v in to_dict(cfg.rl).items()
          if k not in ("dump_rollouts_dir", "replay_rollouts_dir", "collapse_monitor")}
    return _flatten({"rl": rl, "rollout": {"temperature": cfg.rollout.temperature},
                     "run": {"seed": cfg.run.seed}})


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def step_meta(ctx, stage: str, step: int, seed: int, indices: list[int]) -> dict:
    """The metadata of this rank's share of one step (`step` 1-based)."""
    view = config_view(ctx.cfg)
    return {"version": DUMP_VERSION, "stage": stage, "step": step, "seed": seed,
            "rank": ctx.dist.rank, "world_size": ctx.dist.world_size,
            "group_size": ctx.cfg.rl.group_size, "prompt_indices": list(indices),
            "tokenizer": {"size": len(ctx.tokenizer),
                          "digest": _digest(sorted(ctx.tokenizer.get_vocab().items()))},
            "config": view, "config_digest": _digest(view)}


# ---- the hook in rl_step ---------------------------------------------------------------------
def step_rollouts(ctx, engine, prompts: list[dict], indices: list[int], stage: str, step: int,
                  max_response_tokens: int, seed: int):
    """This rank's trajectories of step `step` (0-based) and the rollout metrics, generated
    (and dumped when rl.dump_rollouts_dir is set) or loaded from rl.replay_rollouts_dir; plus
    a StepTrace for finish_step (None when neither is set)."""
    rl = ctx.cfg.rl
    if not (rl.dump_rollouts_dir or rl.replay_rollouts_dir):
        trajs, metrics = generate(ctx, engine, [prompts[i] for i in indices], rl.group_size,
                                  max_response_tokens, seed)
        return trajs, metrics, None
    before = weight_checksums(ctx.hf_model, "weights_before.")
    meta = step_meta(ctx, stage, step + 1, seed, indices)
    if rl.replay_rollouts_dir:
        trajs, metrics = load_step(ctx, rl.replay_rollouts_dir, meta)
        source = "replay"
    else:
        trajs, metrics = generate(ctx, engine, [prompts[i] for i in indices], rl.group_size,
                                  max_response_tokens, seed)
        dump_step(rl.dump_rollouts_dir, meta, trajs)
        source = "dump"
    return trajs, metrics, StepTrace(source, stage, step + 1, meta, trajs, before)


def finish_step(ctx, trace: StepTrace | None, adv, old_lp, upd: dict) -> None:
    """Write the step's parity record (collective; rank 0 writes). No-op without a trace."""
    if trace is None:
        return
    record = step_record(ctx, trace, adv, old_lp, upd)
    if not ctx.dist.is_main:
        return
    path = record_path(ctx.run_dir, trace.stage, trace.step)
    write_record(record, str(path))
    if trace.source == "dump":
        write_record(record, str(step_dir(ctx.cfg.rl.dump_rollouts_dir, trace.stage,
                                          trace.step) / "record.json"))
    log.info("%s step %d: parity record written to %s", trace.stage, trace.step, path)


# ---- dump and load ---------------------------------------------------------------------------
def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def dump_step(root, meta: dict, trajs: list) -> Path:
    """Write this rank's trajectories and (rank 0) the step's meta.json; returns the step dir."""
    out = step_dir(root, meta["stage"], meta["step"])
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt_ids": torch.tensor(t.prompt_ids, dtype=torch.int64),
             "response_ids": torch.tensor(t.response_ids, dtype=torch.int64),
             "loss_mask": torch.tensor(t.loss_mask, dtype=torch.uint8),
             "rollout_logprobs": torch.tensor(t.rollout_logprobs, dtype=torch.float64),
             **{k: getattr(t, k) for k in _SCALARS}} for t in trajs]
    _atomic_save({"meta": meta, "trajectories": rows}, out / f"rank{meta['rank']}.pt")
    if meta["rank"] == 0:
        shared = {k: v for k, v in meta.items() if k not in ("rank", "prompt_indices")}
        write_text_atomic(out / "meta.json", json.dumps(shared, indent=1))
    return out


def _dumped_steps(root, stage: str) -> list[int]:
    return sorted(int(p.name[4:]) for p in (Path(root) / stage).glob("step*")
                  if p.name[4:].isdigit())


def load_step(ctx, root, meta: dict) -> tuple[list, dict]:
    """The dumped trajectories matching `meta` (this rank's share of a step), checked against
    this run: same world size, group size, tokenizer; a config difference is a warning."""
    path = step_dir(root, meta["stage"], meta["step"]) / f"rank{meta['rank']}.pt"
    if not path.is_file():
        steps = _dumped_steps(root, meta["stage"])
        what = (f"it holds {meta['stage']} steps {steps[0]}..{steps[-1]}; run at most "
                f"{steps[-1]} steps" if steps else f"it holds no {meta['stage']} step")
        raise ReplayError(f"--replay-rollouts {root}: no dump of {meta['stage']} step "
                          f"{meta['step']} for rank {meta['rank']} ({path.name}); {what}")
    try:
        payload = torch.load(path, weights_only=True)
        dumped, rows = payload["meta"], payload["trajectories"]
    except Exception as exc:  # a truncated or foreign file: say which
        raise ReplayError(f"{path}: not a rollout dump ({type(exc).__name__}); dump the step "
                          "again") from None
    _check_meta(dumped, meta, path, ctx)
    trajs = [Trajectory(prompt_ids=r["prompt_ids"].tolist(),
                        response_ids=r["response_ids"].tolist(),
                        loss_mask=r["loss_mask"].tolist(),
                        rollout_logprobs=r["rollout_logprobs"].tolist(),
                        **{k: r[k] for k in _SCALARS}) for r in rows]
    _check_trajectories(trajs, meta, path, ctx)
    return trajs, _replay_metrics(trajs)


def _check_meta(dumped: dict, meta: dict, path: Path, ctx) -> None:
    if dumped.get("version") != DUMP_VERSION:
        raise ReplayError(f"{path}: dump format version {dumped.get('version')}, this aster "
                          f"reads {DUMP_VERSION}; dump the step again with this version")
    if dumped["world_size"] != meta["world_size"]:
        raise ReplayError(f"{path}: dumped by {dumped['world_size']} ranks, replayed by "
                          f"{meta['world_size']}; replay with {dumped['world_size']} ranks")
    _check_group_size(dumped, meta["group_size"], path.parent)
    if dumped["tokenizer"] != meta["tokenizer"]:
        raise ReplayError(f"{path}: tokenised with another tokenizer (vocab "
                          f"{dumped['tokenizer']['size']}, digest {dumped['tokenizer']['digest']}"
                          f") than this run's (vocab {meta['tokenizer']['size']}, digest "
                          f"{meta['tokenizer']['digest']}); replay with the dumping run's model")
    if dumped["config_digest"] != meta["config_digest"]:
        diff = [f"{k}={dumped['config'].get(k)!r} (now {v!r})"
                for k, v in meta["config"].items() if dumped["config"].get(k) != v]
        log.warning("replay %s: the dump was made with %s; the step's numbers will differ",
                    path.parent.name, ", ".join(diff) or "another config")
    if dumped["prompt_indices"] != meta["prompt_indices"]:
        log.warning("replay %s: the dump's prompts are not the ones this run picked for the "
                    "step (another prompt set or run.seed); the rollout records follow this "
                    "run's prompt indices", path.parent.name)


def _check_trajectories(trajs: list, meta: dict, path: Path, ctx) -> None:
    expected = len(meta["prompt_indices"]) * meta["group_size"]
    if len(trajs) != expected:
        raise ReplayError(f"{path}: {len(trajs)} trajectories, this run's step takes "
                          f"{expected} (rl.prompts_per_step x rl.group_size per rank); replay "
                          "with the dumping run's rl.prompts_per_step")
    vocab = ctx.hf_model.get_input_embeddings().num_embeddings
    for t in trajs:
        if not len(t.response_ids) == len(t.loss_mask) == len(t.rollout_logprobs):
            raise ReplayError(f"{path}: a trajectory's response ids, loss mask and rollout "
                              "log-probs differ in length; the dump is corrupt, dump again")
        if max(t.prompt_ids + t.response_ids, default=0) >= vocab:
            raise ReplayError(f"{path}: token ids up to {max(t.prompt_ids + t.response_ids)} "
                              f"but the model's vocabulary has {vocab}; replay with the "
                              "dumping run's model")


def _replay_metrics(trajs: list) -> dict:
    """The rollout metrics generate() reports, from the loaded trajectories (no time spent)."""
    m = rollout_metrics(trajs)
    return {"time_tools_s": 0.0, "time_generate_s": 0.0,
            "tool_error_rate": m["tool_error_rate"],
            "tool_exec_error_rate": m["tool_exec_error_rate"], "turns_mean": m["turns_mean"]}


# ---- the record ------------------------------------------------------------------------------
def _gather(ctx, values: list) -> list:
    if ctx.dist.world_size == 1:
        return values
    parts = [None] * ctx.dist.world_size
    tdist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def _token_quantities(ctx, trajs, adv, old_lp) -> dict:
    """Inputs and old log-probs, summed over ranks in float64 (on CPU, fixed order)."""
    masks = [torch.as_tensor(t.loss_mask, dtype=torch.bool) for t in trajs]
    lp = [torch.as_tensor(v).double().cpu()[m] for v, m in zip(old_lp, masks)]
    pos = [torch.nonzero(m).view(-1).double() % 7 + 1 for m in masks]
    ids = [float(sum(t.prompt_ids) + sum(t.response_ids)) for t in trajs]
    sums = torch.tensor([
        len(trajs), sum(int(m.sum()) for m in masks), sum(float(t.reward) for t in trajs),
        sum(float(torch.tensor(t.rollout_logprobs, dtype=torch.float64).sum()) for t in trajs),
        sum(ids), sum(abs(float(a)) for a in adv),
        sum(float(v.sum()) for v in lp), sum(float(v.abs().sum()) for v in lp),
        sum(float((v * w).sum()) for v, w in zip(lp, pos))], dtype=torch.float64)
    sums = ctx.all_reduce_sum(sums).tolist()
    keys = ("input.trajectories", "input.trained_tokens", "input.reward_sum",
            "input.rollout_logp_sum", "input.token_id_sum", "adv.abs_sum", "old_logp.sum",
            "old_logp.abs_sum", "old_logp.weighted_sum")
    out = dict(zip(keys, sums))
    out["old_logp.per_trajectory"] = _gather(ctx, [float(v.sum()) for v in lp])
    tokens = _gather(ctx, torch.cat(lp).tolist() if lp else [])
    if len(tokens) <= MAX_TOKEN_VALUES:
        out["old_logp.per_token"] = tokens
    return out


def step_record(ctx, trace: StepTrace, adv, old_lp, upd: dict) -> dict:
    """The parity record (kind rl_step) of one dumped or replayed step; a collective."""
    quantities = {**_token_quantities(ctx, trace.trajs, adv, old_lp), **trace.weights_before}
    for key in ("loss", "grad_norm", "clip_frac_upper", "clip_frac_lower", "approx_kl"):
        if key in upd:
            quantities[f"update.{key}"] = float(upd[key])
    after = weight_checksums(ctx.hf_model, "weights_after.")
    quantities.update(after)
    # the update itself: tolerances relative to the weights would hide a wrong update
    for key in ("sum", "weighted_sum"):
        quantities[f"weights_delta.{key}"] = (after[f"weights_after.{key}"]
                                              - trace.weights_before[f"weights_before.{key}"])
    dtype = dtype_name(ctx.compute_dtype)  # the parity tolerances are the compute dtype's
    backend = ctx.backend
    return {"kind": "rl_step", "source": trace.source, "device": backend.name,
            "kernel_impl": backend.kernel_impl, "torch": torch.__version__,
            "host": platform.node(), "stage": trace.stage, "step": trace.step,
            "seed": trace.meta["seed"], "world_size": trace.meta["world_size"],
            "config_digest": trace.meta["config_digest"],
            "old_logp": ctx.cfg.rl.old_logp, "results": {dtype: quantities}}
