"""`aster eval`: avg@k / pass@k evaluation on AIME/HMMT-style sets with the tool."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from aster.backend import select_backend
from aster.commands.common import add_run_args
from aster.config import load_config
from aster.data import eval_sets
from aster.errors import AsterUserError
from aster.eval import compare, evaluate, format_table, log_eval_plan, write_results
from aster.rollout.chat_format import chat_format
from aster.rollout.factory import build_engine
from aster.rollout.templates import use_template
from aster.rollout.tools import tool_schemas
from aster.sandbox import SandboxPool
from aster.train.checkpoint import write_text_atomic
from aster.train.model_source import check_model_path, resolve_model_path
from aster.train.precision import compute_dtype, dtype_name


def _benchmarks(args, cfg) -> dict:
    if args.data:
        cfg.data.eval_paths = list(args.data)
    return eval_sets(cfg.data, cfg.sandbox)


def _model_context(model_path: str) -> int | None:
    """The model's own context length (max_position_embeddings), when its config says."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    except (OSError, ValueError):
        return None


def _require_model(model_path: str | None) -> None:
    if not model_path:
        raise AsterUserError("no model to evaluate: give --model PATH (a checkpoint directory "
                             "or a Hugging Face model path) or model.path=PATH")


def load_engine(model_path: str, backend, cfg, *, max_model_len: int | None = None):
    """(engine, tokenizer) for a checkpoint directory or Hugging Face model path: the engine
    `cfg.rollout.engine` (or the backend) names, in `cfg.model.dtype` resolved as training
    resolves it (aster.train.precision.compute_dtype);
    `max_model_len` defaults to the eval budget plus room for the prompt."""
    from transformers import AutoTokenizer

    _require_model(model_path)
    check_model_path(model_path)  # a Hub name: its cached snapshot, or fetched once here
    model_path = resolve_model_path(model_path, lambda fn, what: fn())
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise AsterUserError(f"cannot load a tokenizer from {model_path!r} ({exc}); give a "
                             "model directory or a reachable Hugging Face model path") from exc
    use_template(tokenizer, cfg.model.chat_template)
    # a template without append-only tool turns, or one that drops the tool schema, fails here
    chat_format(tokenizer, tool_schemas(cfg.rollout.tools))
    # the dtype training computes in and pushes to its engine (auto: bf16 on GPUs and NPUs)
    dtype = dtype_name(compute_dtype(cfg.model.dtype, backend))
    max_model_len = max_model_len or cfg.eval.budget_list[-1] + cfg.rollout.max_prompt_tokens
    limit = _model_context(model_path)
    if limit and max_model_len > limit:  # vLLM refuses a longer one; the budget still applies
        max_model_len = limit
    engine = build_engine(backend, model_path, cfg.rollout, dtype=dtype, tokenizer=tokenizer,
                          max_model_len=max_model_len)
    return engine, tokenizer


def write_run_config(out: Path, cfg) -> None:
    """`out`/config.yaml: the resolved config this evaluation runs with."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    logging.getLogger("aster").info("run directory: %s", out.resolve())


def run_eval(args: argparse.Namespace) -> int:
    if args.compare:
        print(compare(args.compare))
        return 0
    overrides = list(args.overrides) + ([f"eval.k={args.k}"] if args.k else [])
    if args.budgets:
        overrides.append(f"eval.budgets=[{','.join(str(b) for b in args.budgets)}]")
        overrides.append(f"eval.max_tokens={max(args.budgets)}")  # generated at the largest
    cfg = load_config(args.config, overrides)
    if args.model:  # the config written to the run directory names the model evaluated
        cfg.model.path = args.model
    backend = select_backend(args.device or cfg.run.device)
    benchmarks = _benchmarks(args, cfg)
    _require_model(args.model or cfg.model.path)  # before the run directory: nothing written
    log_eval_plan(benchmarks, cfg.eval)
    # the run directory and the resolved config before the model loads: a job stopped while
    # loading or generating still says where it was going and with what
    out = Path(args.output_dir or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    write_run_config(out, cfg)
    engine, tokenizer = load_engine(args.model or cfg.model.path, backend, cfg)
    try:
        with SandboxPool(cfg.sandbox) as pool:
            pool.log_confinement(logging.getLogger("aster"))
            summary, rows = evaluate(engine, pool, benchmarks, cfg.eval, tokenizer,
                                     rollout_cfg=cfg.rollout)
    finally:
        engine.close()
    samples = write_results(summary, rows, out)
    print(format_table(summary))
    print(f"per-sample results: {samples}; summary: {out / 'summary.json'}")
    return 0


def register(sub) -> None:
    desc = "avg@k / pass@k evaluation on AIME/HMMT-style sets with the tool."
    parser = sub.add_parser("eval", help=desc, description=desc)
    parser.add_argument("--model", "-m", default=None, metavar="PATH",
                        help="checkpoint directory or Hugging Face model path "
                             "(default: the config's model.path)")
    parser.add_argument("--data", nargs="+", default=None, metavar="FILE",
                        help="eval sets (verl parquet or jsonl {problem, answer}; 'synthetic' "
                             "for the tiny task); default: the config's data.eval_paths")
    parser.add_argument("--k", type=int, default=None, help="samples per problem (eval.k)")
    parser.add_argument("--budgets", type=int, nargs="+", default=None, metavar="TOKENS",
                        help="score several response budgets from one generation (eval.budgets, "
                             "e.g. --budgets 30000 90000): sampled once at the largest, each "
                             "smaller one scored by cutting every trajectory where it ends; one "
                             "table per budget")
    parser.add_argument("--compare", nargs="+", default=None, metavar="SAMPLES.jsonl",
                        help="print a side-by-side table of earlier runs' samples.jsonl files")
    add_run_args(parser)
    parser.set_defaults(func=run_eval)
