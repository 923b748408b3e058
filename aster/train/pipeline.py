"""`aster train`: SFT -> RL stage 1 -> all-correct filter -> RL stage 2 -> eval, in one run
directory, resumable (finished stages are skipped, the current one resumes from its last
checkpoint), ending with a summary table and summary.json."""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as tdist

from aster.algo import PolicyForward
from aster.backend import DistInfo
from aster.data.formats import load_sft
from aster.data.io import DataError
from aster.data.prompts import load_prompts
from aster.data.synthetic import build_synthetic
from aster.errors import AsterUserError
from aster.eval import evaluate, write_results
from aster.metrics import MetricsWriter, held_out_collapse
from aster.rollout.tools import tool_schemas
from aster.sandbox import SandboxPool
from aster.tiny_model import build_tiny_model, default_corpus, train_tokenizer
from aster.train.checkpoint import write_text_atomic
from aster.train.common import TrainContext, load_policy, save_hf_model
from aster.train.model_source import check_model_path, resolve_model_path
from aster.train.precision import check_training_dtype, compute_dtype
from aster.train.reference import check_reference_policy
from aster.train.rl import filter_prompts, run_rl_stage
from aster.train.rollout_wait import set_rollout_timeout
from aster.train.rollouts import SharedEngine, push_weights
from aster.train.sft import encode_dataset, run_sft
from aster.train.stages import (
    FILTERED,
    NO_RECORDS,
    StageInputError,
    check_stage_inputs,
    stage1_records,
)
from aster.train.strategy import build_strategy
from aster.train.world import check_world_size

log = logging.getLogger("aster")

TRAIN_STAGES = ("sft", "rl_stage1", "rl_stage2")


class RunDirError(AsterUserError):
    """The run directory cannot be used as asked (exists without --resume, or missing)."""


def default_run_dir(cfg, config_name: str | None) -> Path:
    name = Path(config_name).stem if config_name else cfg.run.name
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg, config_name, output_dir, resume: bool, dist) -> Path:
    """The run directory, agreed on by every rank; refuses to reuse one without --resume.

    Rank 0 alone inspects the directory and broadcasts its verdict: other ranks checking for
    themselves would race with rank 0 creating state.json."""
    path = Path(output_dir or cfg.run.output_dir or default_run_dir(cfg, config_name))
    error = _run_dir_error(path, resume) if dist.is_main else None
    path_s, error = _broadcast((str(path), error), dist)
    if error:
        raise RunDirError(error)
    path = Path(path_s)
    if dist.is_main:
        path.mkdir(parents=True, exist_ok=True)
        state = path / "state.json"
        if not state.is_file():
            write_text_atomic(state, json.dumps({"done": {}}))
        write_text_atomic(path / "config.yaml", cfg.to_yaml())
    _barrier(dist)
    return path


def _run_dir_error(path: Path, resume: bool) -> str | None:
    state = path / "state.json"
    if resume and not state.is_file():
        return (f"--resume: {path} holds no aster run (no state.json); give the --output-dir "
                "of the run to resume")
    if not resume and state.is_file():
        return (f"{path} already holds a run; pass --resume to continue it or choose another "
                "--output-dir")
    return None


def _broadcast(value, dist):
    if dist.world_size == 1:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(dist, fn, what: str) -> None:
    """Run `fn` on rank 0 alone (it builds what every rank then reads) and continue together.
    Rank 0's error reaches every rank, so all of them stop with the same one line instead of
    the others waiting at a barrier until the process group times out."""
    failure = None
    if dist.is_main:
        try:
            fn()
        except Exception as exc:  # shared below, re-raised on every rank
            failure = exc
    shared = failure if failure is None or isinstance(failure, AsterUserError) else \
        RuntimeError(f"rank 0 failed while {what}: {type(failure).__name__}: {failure}")
    shared = _broadcast(shared, dist)
    if failure is not None:
        raise failure
    if shared is not None:
        raise shared


def _barrier(dist):
    if dist.world_size > 1:
        tdist.barrier()


def read_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def mark_done(run_dir: Path, stage: str, result: dict, is_main: bool) -> None:
    if not is_main:
        return
    state = read_state(run_dir)
    state["done"][stage] = result
    write_text_atomic(run_dir / "state.json", json.dumps(state, indent=1))


def base_model_dir(cfg, run_dir: Path, is_main: bool, dist, data: dict | None = None) -> str:
    """model.path, or the tiny model built (once) into run_dir/base_model, its tokenizer
    trained on the built-in corpus plus the rendered SFT conversations (short sequences)."""
    if cfg.model.path:  # a directory (a Hub name was resolved to its snapshot at start-up)
        return cfg.model.path
    out = run_dir / "base_model"

    def build():
        if (out / "config.json").is_file():
            return
        tmp = run_dir / "base_model.tmp"
        corpus = default_corpus() + _rendered_corpus(data["sft"] if data else [])
        build_tiny_model(tmp, cfg.model.tiny, seed=cfg.run.seed, corpus=corpus)
        tmp.rename(out)

    on_main(dist, build, "building the tiny model")
    return str(out)


def _rendered_corpus(examples: list[dict]) -> list[str]:
    """The conversations as the chat template renders them (a throwaway byte-level tokenizer
    only supplies the template)."""
    if not examples:
        return []
    tok = train_tokenizer(300, ["x"])
    texts = []
    for e in examples:
        try:
            texts.append(tok.apply_chat_template(e["messages"], tools=e.get("tools") or None,
                                                 tokenize=False))
        except Exception:  # noqa: BLE001 - a row SFT will skip and report; no corpus text
            continue
    return texts


def make_context(cfg, backend, model_dir: str, run_dir: Path, writer,
                 pool=None) -> TrainContext:
    """Load the policy from `model_dir`, wrap it for parallelism; the trainers' context
    (`pool`: the sandbox pool its rollouts use)."""
    torch.manual_seed(cfg.run.seed)
    dtype = compute_dtype(cfg.model.dtype, backend)
    strategy = build_strategy(cfg.distributed, backend, dtype)
    model, tokenizer = load_policy(model_dir, cfg.model, backend)
    policy = strategy.wrap(PolicyForward(model, backend.kernel_impl, dtype))
    log.debug("policy from %s, parallelism %s, compute dtype %s", model_dir, strategy.name,
              dtype)
    return TrainContext(cfg=cfg, backend=backend, strategy=strategy, policy=policy,
                        hf_model=model, tokenizer=tokenizer, run_dir=Path(run_dir),
                        writer=writer, compute_dtype=dtype, model_dir=model_dir, pool=pool)


def stage_model_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "model"


def input_model_for(stage: str, stages: list[str], run_dir: Path, base: str) -> str:
    """The model a stage starts from: the latest earlier training stage's among the run's
    `stages` (run.stages), else the base."""
    earlier = TRAIN_STAGES[:TRAIN_STAGES.index(stage)]
    for prev in reversed(earlier):
        if prev in stages and (stage_model_dir(run_dir, prev) / "config.json").is_file():
            return str(stage_model_dir(run_dir, prev))
    return base


# ---- data -------------------------------------------------------------------------------------
def needed_data(cfg) -> set[str]:
    """Which of "sft", "rl", "eval" the run's stages read: `aster sft` needs only the SFT file,
    `aster rl` only the prompts (the eval sets only when it evaluates), and the tiny model's
    tokenizer corpus takes the synthetic SFT conversations when they are at hand anyway."""
    stages = set(cfg.run.stages)
    need = set()
    if "sft" in stages or (not cfg.model.path and cfg.data.sft_path == "synthetic"):
        need.add("sft")
    if stages & {"rl_stage1", "rl_stage2", "filter"}:
        need.add("rl")
    if "eval" in stages:
        need.add("eval")
    return need


def load_task_data(cfg, run_dir: Path, dist) -> dict:
    """{"sft": trajectories, "rl": prompts, "eval": {name: prompts}}, each only when a stage of
    the run reads it (empty otherwise); the synthetic task is generated once (rank 0, by
    running the sandbox) and cached in the run directory."""
    need = needed_data(cfg)
    paths = {"sft": [cfg.data.sft_path], "rl": [cfg.data.rl_path], "eval": cfg.data.eval_paths}
    uses_synthetic = any("synthetic" in paths[k] for k in need)
    cache = run_dir / "data" / "synthetic.json"
    synthetic = None
    if uses_synthetic:
        def build():
            if cache.is_file():
                return
            data = build_synthetic(cfg.data.synthetic, cfg.sandbox)
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps({"sft": data.sft, "rl": data.rl,
                                                 "eval": data.eval}))

        on_main(dist, build, "generating the synthetic task")
        synthetic = json.loads(cache.read_text())
    return {"sft": _sft_examples(cfg.data, synthetic) if "sft" in need else [],
            "rl": _prompts(cfg.data.rl_path, cfg, synthetic, "rl") if "rl" in need else [],
            "eval": {Path(p).stem if p != "synthetic" else "synthetic":
                     _prompts(p, cfg, synthetic, "eval") for p in cfg.data.eval_paths}
            if "eval" in need else {}}


def _sft_examples(data_cfg, synthetic) -> list[dict]:
    """The SFT trajectories of the `data:` section with at least data.min_tool_calls."""
    if data_cfg.sft_path == "synthetic":  # data.max_rows limits the synthetic task as a file
        examples = _first(synthetic["sft"], data_cfg.max_rows)
    else:
        examples = load_sft(data_cfg.sft_path, data_cfg.max_rows).examples
    dense = [e for e in examples if _tool_calls(e) >= data_cfg.min_tool_calls]
    if len(dense) < len(examples):
        log.info("sft data: kept %d of %d trajectories with >= %d tool calls", len(dense),
                 len(examples), data_cfg.min_tool_calls)
    if not dense:
        raise DataError(f"{data_cfg.sft_path}: no trajectory has >= data.min_tool_calls="
                        f"{data_cfg.min_tool_calls} tool calls; lower it or use denser data")
    return dense


def _first(items: list, max_rows: int) -> list:
    return items[:max_rows] if max_rows else items


def _tool_calls(example: dict) -> int:
    return sum(len(m.get("tool_calls") or []) for m in example["messages"])


def _prompts(path: str, cfg, synthetic, split: str) -> list[dict]:
    if path == "synthetic":
        return _first(synthetic[split], cfg.data.max_rows)
    return load_prompts(path, cfg.data.max_rows).prompts


# ---- stages -----------------------------------------------------------------------------------
def run_sft_stage(ctx, data) -> None:
    encoded, dropped = encode_dataset(ctx.tokenizer, data["sft"], ctx.cfg.sft.cutoff_len,
                                      tools=tool_schemas(ctx.cfg.rollout.tools))
    if not encoded:
        raise DataError("no SFT trajectory to train on; check data.sft_path")
    run_sft(ctx, encoded, dropped)


def run_rl(ctx, engine, stage: str, data, run_dir: Path) -> None:
    stage_cfg = ctx.cfg.rl.stage1 if stage == "rl_stage1" else ctx.cfg.rl.stage2
    prompts = data["rl"]
    if stage == "rl_stage2" and stage_cfg.filter_all_correct:
        prompts = _filtered_prompts(run_dir, prompts)
    run_rl_stage(ctx, engine, prompts, stage, stage_cfg)


def _filtered_prompts(run_dir: Path, prompts: list[dict]) -> list[dict]:
    path = run_dir / FILTERED
    if not path.is_file():  # check_stage_inputs refuses such a run before it starts
        raise StageInputError(NO_RECORDS)
    kept = json.loads(path.read_text())
    return kept if kept else prompts


def run_filter(cfg, run_dir: Path, data, is_main: bool) -> dict:
    """Drop prompts answered correctly G/G during stage 1's last epoch, from its records (this
    run's, or rl.stage2.filter_records for stage 2 run alone)."""
    records = stage1_records(cfg, run_dir)
    if not records.is_file():  # stage 1 of this run recorded nothing (no step ran)
        raise StageInputError(NO_RECORDS)
    kept, dropped = filter_prompts(data["rl"], records)
    if not kept:
        log.warning("filter: every prompt was answered G/G in stage 1; stage 2 keeps them all")
    if is_main:
        out = run_dir / FILTERED
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(kept))
    log.info("filter: dropped %d of %d prompts answered correctly G/G in stage 1 (%s)",
             dropped, len(data["rl"]), records)
    return {"kept": len(kept), "dropped": dropped}


def evaluate_stage(ctx, engine, data, stage: str) -> dict:
    """Held-out accuracy and tool calls per trajectory (aster.eval.evaluate), written to
    run_dir/eval/<stage>/."""
    summary, rows = evaluate(engine, ctx.pool, data["eval"], ctx.cfg.eval, ctx.tokenizer,
                             rollout_cfg=ctx.cfg.rollout, dist=ctx.dist)
    if ctx.dist.is_main:
        write_results(summary, rows, ctx.run_dir / "eval" / stage)
    log.info("eval after %s: accuracy %.3f, tool calls per trajectory %.2f", stage,
             summary["accuracy"], summary["tool_calls_mean"])
    return {"accuracy": summary["accuracy"], "tool_calls_mean": summary["tool_calls_mean"]}


def _train_stage(stage, cfg, backend, run_dir, base, data, writer, pool, engines) -> dict:
    """Run one training stage (resuming it), save its model, evaluate it when eval is on.
    `engines` holds the run's one rollout engine: asleep while this stage's model loads and
    trains, woken (after the training allocator's cache is freed) when weights go in."""
    engines.idle()
    try:
        return _train_and_evaluate(stage, cfg, backend, run_dir, base, data, writer, pool,
                                   engines)
    finally:
        release(backend)


def _train_and_evaluate(stage, cfg, backend, run_dir, base, data, writer, pool,
                        engines) -> dict:
    """The stage's context (the model, its strategy) lives in this call only: once it
    returns, the stage's model, optimizer and engine state can be collected."""
    model_in = input_model_for(stage, cfg.run.stages, run_dir, base)
    ctx = make_context(cfg, backend, model_in, run_dir, writer, pool=pool)
    if stage == "sft":
        run_sft_stage(ctx, data)
    else:
        run_rl(ctx, engines.get(ctx, model_in), stage, data, run_dir)
    out = save_hf_model(ctx.hf_model, ctx.tokenizer, stage_model_dir(run_dir, stage),
                        ctx.dist.is_main, dtype=ctx.compute_dtype)
    _barrier(ctx.dist)
    log.info("%s done; model saved to %s", stage, out)
    if "eval" not in cfg.run.stages:
        return {}
    engine = engines.get(ctx, str(out))
    push_weights(ctx, engine)
    return evaluate_stage(ctx, engine, data, stage)


def release(backend) -> None:
    """After a stage (its context gone with the call that held it): collect its model,
    optimizer and engine state (FSDP2 modules are cyclic) and return the training
    allocator's cached memory, before the next stage loads its own."""
    gc.collect()
    backend.empty_cache()


def run_pipeline(cfg, backend, *, config_name: str | None = None, output_dir: str | None = None,
                 resume: bool = False) -> dict:
    """The whole recipe in one run directory; returns the summary dict."""
    check_inputs(cfg)
    check_stage_inputs(cfg, output_dir, resume)
    # before the process group and any model: a world size the batches cannot split would
    # hang the first collective instead
    check_world_size(cfg, DistInfo.from_env().world_size)
    dist = backend.init_distributed(cfg.distributed.timeout_s)
    _resolve_hub_name(cfg.model, dist)
    set_rollout_timeout(cfg.distributed.rollout_timeout_s)
    if cfg.run.deterministic:
        backend.set_deterministic(cfg.run.seed)
    # before the run directory: sandbox.require_confinement refuses here, nothing written
    with SandboxPool(cfg.sandbox) as pool:
        if dist.is_main:
            pool.log_confinement(log)
        run_dir = prepare_run_dir(cfg, config_name, output_dir, resume, dist)
        if dist.is_main:
            log.info("run directory: %s", run_dir.resolve())
        writer = MetricsWriter.from_config(run_dir, cfg.logging, is_main=dist.is_main)
        engines = SharedEngine()  # one rollout engine per run, reused by every stage
        try:
            data = load_task_data(cfg, run_dir, dist)
            base = base_model_dir(cfg, run_dir, dist.is_main, dist, data)
            _run_stages(cfg, backend, run_dir, base, data, writer, pool, engines, dist)
        finally:
            engines.close()
            writer.close()
    return summary_of(read_state(run_dir)["done"])


def _resolve_hub_name(model_cfg, dist) -> None:
    """model.path as a Hub name -> its cached snapshot (rank 0 downloads it while the others
    wait), before the run directory exists: a failed download leaves nothing behind."""
    if model_cfg.path:
        path = resolve_model_path(model_cfg.path, lambda fn, what: on_main(dist, fn, what))
        if path != model_cfg.path and dist.is_main:
            log.info("model.path %s: the cached snapshot %s", model_cfg.path, path)
        model_cfg.path = path


def _run_stages(cfg, backend, run_dir: Path, base, data, writer, pool, engines, dist) -> None:
    for stage in cfg.run.stages:
        done = read_state(run_dir)["done"]
        if stage in done:
            log.info("%s: already finished, skipped", stage)
            continue
        if stage == "filter":
            result = run_filter(cfg, run_dir, data, dist.is_main)
        elif stage == "eval":
            result = write_summary(run_dir, done, dist.is_main)
        else:
            result = _train_stage(stage, cfg, backend, run_dir, base, data, writer, pool,
                                  engines)
            _warn_held_out_collapse(cfg.rl.collapse_monitor, done, stage, result)
        mark_done(run_dir, stage, result, dist.is_main)
        _barrier(dist)


def _warn_held_out_collapse(monitor, done: dict, stage: str, result: dict) -> None:
    """`monitor`: rl.collapse_monitor."""
    if stage == "sft" or not result or not done.get("sft") or not monitor.enabled:
        return
    warning = held_out_collapse(done["sft"], result, monitor.eval_min_fraction)
    if warning:
        log.warning("after %s: %s", stage, warning)


def check_inputs(cfg) -> None:
    """Fail before anything is written when a given path cannot be used (or a KL reference
    policy cannot be sharded like the policy)."""
    check_reference_policy(cfg)
    check_model_path(cfg.model.path)
    if any(stage in TRAIN_STAGES for stage in cfg.run.stages):
        check_training_dtype(cfg.model.dtype)
    need = needed_data(cfg)
    keys = [k for k, part in (("sft_path", "sft"), ("rl_path", "rl")) if part in need]
    for key in keys:
        value = getattr(cfg.data, key)
        if value != "synthetic" and not Path(value).is_file():
            raise DataError(f"data.{key}={value!r}: no such file; give a parquet/jsonl file "
                            "or 'synthetic'")
    for i, value in enumerate(cfg.data.eval_paths if "eval" in need else []):
        if value != "synthetic" and not Path(value).is_file():
            raise DataError(f"data.eval_paths[{i}]={value!r}: no such file; give a parquet/"
                            "jsonl file or 'synthetic' (or run without the eval stage)")


def summary_of(done: dict) -> dict:
    return {s: done[s] for s in TRAIN_STAGES if done.get(s)}


def write_summary(run_dir: Path, done: dict, is_main: bool) -> dict:
    """summary.json and the table: held-out accuracy and tool calls after each stage."""
    summary = summary_of(done)
    if is_main:
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
        log.info("summary written to %s", run_dir / "summary.json")
    return {"written": True}


def format_summary(summary: dict) -> str:
    lines = [f"{'stage':<12}{'accuracy':>10}{'tool_calls':>12}"]
    for stage, r in summary.items():
        lines.append(f"{stage:<12}{r['accuracy'] * 100:>9.1f}%{r['tool_calls_mean']:>12.2f}")
    return "\n".join(lines)
