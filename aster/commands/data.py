"""`aster data`: inspect, curate and synthesise SFT trajectories (stats, curate, synth, synthetic)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

from aster.backend import DEVICE_CHOICES, DEVICE_HELP, select_backend
from aster.commands.common import add_config_args, add_run_args
from aster.commands.eval import load_engine
from aster.config import load_config
from aster.data import write_prompts, write_sft
from aster.data.curate import curate, trajectory_stats
from aster.data.formats import load_sft, sft_row
from aster.data.io import file_kind, read_rows, write_rows
from aster.data.prompts import load_prompts
from aster.data.report import format_summary, prompt_summary, summarize, text_histogram, write_png
from aster.data.synth import SynthConfig, synthesize
from aster.data.synth_engine import EngineTeacher
from aster.data.synth_http import HTTPTeacher
from aster.data.synth_store import SynthStore
from aster.data.synthetic import build_synthetic
from aster.errors import AsterUserError
from aster.sandbox import SandboxPool

logger = logging.getLogger("aster")


def _tokenizer(path: str | None):
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise AsterUserError(f"--tokenizer {path}: cannot load a tokenizer there ({exc})") from exc


def _stats_of(loaded, args):
    tokenizer = _tokenizer(args.tokenizer)
    return [trajectory_stats(e, tokenizer, rescore=not args.no_rescore) for e in loaded.examples]


def _is_prompt_file(path: str) -> bool:
    """True when the file holds RL prompts / an eval set rather than SFT trajectories."""
    rows, _ = read_rows(path)
    first = next((r for r in rows if isinstance(r, dict)), {})
    return not ({"conversations", "messages"} & set(first)) and bool(
        {"prompt", "problem", "question"} & set(first))


def _prompt_stats(args: argparse.Namespace) -> int:
    loaded = load_prompts(args.file)
    summary = prompt_summary(loaded.prompts, _tokenizer(args.tokenizer))
    # (control characters repaired: load_prompts has logged its one-line summary)
    print(f"{args.file}: {len(loaded.prompts)} prompts ({loaded.layout} layout, no "
          f"trajectories), {loaded.skipped.count} malformed rows skipped")
    print("problem length (characters):")
    print(text_histogram([len(p["problem"]) for p in loaded.prompts]))
    print("summary:")
    print(format_summary(summary))
    if args.png:
        print("--png draws trajectory histograms; a prompt file has none (skipped)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    if _is_prompt_file(args.file):
        return _prompt_stats(args)
    loaded = load_sft(args.file)
    stats = _stats_of(loaded, args)
    summary = summarize(stats)
    print(f"{args.file}: {len(stats)} trajectories ({loaded.layout} layout), "
          f"{loaded.skipped.count} malformed rows skipped")
    print("tool calls per trajectory:")
    print(text_histogram([s.tool_calls for s in stats]))
    print("summary:" + ("" if args.tokenizer else " (tokens approximated as chars/4; "
                                                  "--tokenizer for exact counts)"))
    print(format_summary(summary))
    if args.png:
        write_png(stats, args.png)
        print(f"wrote {args.png}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


def run_curate(args: argparse.Namespace) -> int:
    loaded = load_sft(args.input)
    stats = _stats_of(loaded, args)
    result = curate(loaded.examples, stats, min_tool_calls=args.min_tool_calls,
                    require_correct=not args.keep_incorrect, max_tokens=args.max_tokens,
                    dedup=args.dedup, size=args.size, seed=args.seed)
    print(f"{args.input}: {len(loaded.examples) + loaded.skipped.count} rows "
          f"({loaded.layout} layout)")
    print(f"  {'malformed':<28} -{loaded.skipped.count}")
    for name, n in result.removed.items():
        print(f"  {name:<28} -{n}")
    out_kind = file_kind(args.output)
    if out_kind == loaded.file_kind:  # same file type: the rows exactly as they were read
        rows = [loaded.rows[i] for i in result.kept]
    else:
        rows = [sft_row(loaded.examples[i], loaded.layout, out_kind) for i in result.kept]
    write_rows(rows, args.output)
    kept = Counter(stats[i].use for i in result.kept)
    print(f"wrote {len(rows)} trajectories to {args.output} ({loaded.layout} layout; "
          f"tool use: {dict(kept)})")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    data = build_synthetic(cfg.data.synthetic, cfg.sandbox)
    out = Path(args.out_dir)
    write_sft(data.sft, out / "sft.jsonl", "aster")
    write_prompts(data.rl, out / "rl.jsonl", "plain")
    write_prompts(data.eval, out / "eval.jsonl", "plain")
    print(f"wrote {out}/sft.jsonl ({len(data.sft)}), rl.jsonl ({len(data.rl)}), "
          f"eval.jsonl ({len(data.eval)})")
    return 0


def _synth_config(args: argparse.Namespace):
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    return SynthConfig(endpoint=args.endpoint, model=args.model or "teacher",
                       samples_per_prompt=args.samples, max_tool_calls=args.max_tool_calls,
                       max_tokens=args.max_tokens, temperature=args.temperature,
                       top_p=args.top_p, concurrency=args.concurrency, api_key=api_key,
                       seed=args.seed)


def _engine_teacher(args, cfg, synth_cfg, pool):
    """An EngineTeacher on --model, with the engine built exactly as `aster eval` builds it."""
    if args.engine:
        cfg.rollout.engine = args.engine
    backend = select_backend(args.device or cfg.run.device)
    engine, tokenizer = load_engine(args.model or cfg.model.path, backend, cfg,
                                    max_model_len=synth_cfg.max_tokens + 4096)
    return EngineTeacher(synth_cfg, engine, tokenizer, pool, cfg.rollout), engine


def run_synth(args: argparse.Namespace) -> int:
    if args.endpoint and args.engine:
        raise AsterUserError("--engine runs --model locally; it cannot be combined with "
                             "--endpoint (drop one)")
    cfg = load_config(args.config, args.overrides)
    if not args.endpoint and not (args.model or cfg.model.path):
        raise AsterUserError("no teacher: give --model PATH (a checkpoint directory or a Hugging "
                             "Face model path) or --endpoint URL")
    synth_cfg = _synth_config(args)
    SynthStore(args.output, args.format)  # a bad output path or format fails before loading
    prompts = load_prompts(args.prompts, max_rows=args.max_prompts).prompts
    engine = None
    with SandboxPool(cfg.sandbox) as pool:
        pool.log_confinement(logger)
        try:
            if args.endpoint:
                teacher = HTTPTeacher(synth_cfg, pool)
            else:
                teacher, engine = _engine_teacher(args, cfg, synth_cfg, pool)
            counts = synthesize(prompts, args.output, synth_cfg, teacher, layout=args.format,
                                progress=not args.no_progress)
        finally:
            if engine is not None:
                engine.close()
    print(f"wrote {counts['done'] - counts['rejected']} new trajectories to {args.output} "
          f"({counts['skipped']} already done; {counts['rejected']} rejected; "
          f"{counts['correct']} correct; finish reasons: {counts['finish_reasons']})")
    return 0


def _add_stat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="count tokens with this tokenizer's chat template (default: ~chars/4)")
    p.add_argument("--no-rescore", action="store_true",
                   help="do not re-score final answers with aster.reward")


def _register_synth(dsub) -> None:
    p = dsub.add_parser(
        "synth", help="teacher trajectories with the tool run in aster's sandbox (resumable)",
        description="Generate SFT trajectories with a teacher: a local model through an aster "
                    "rollout engine (--model DIR [--engine hf|vllm]) or an OpenAI-compatible "
                    "endpoint (--endpoint URL). Tool calls run in aster's sandbox; reasoning "
                    "is kept; each row records whether the final answer is correct. Already "
                    "done (problem, sample) pairs are skipped, so an interrupted run resumes. "
                    "Trajectories that cannot be SFT data (a malformed tool call) are listed "
                    "with the reason in OUTPUT.rejected.jsonl.")
    p.add_argument("prompts", help="prompt file (verl parquet or jsonl {problem, answer})")
    p.add_argument("output", help="output .parquet (ASTER_SFT4K layout) or .jsonl (aster "
                                  "layout); see --format")
    p.add_argument("--format", choices=["sharegpt", "openai", "aster"], default=None,
                   help="sharegpt: the ASTER_SFT4K conversations layout; openai: `messages` "
                        "with tool_calls; aster: aster's own messages (default: sharegpt for "
                        ".parquet, aster for .jsonl)")
    p.add_argument("--model", "-m", default=None, metavar="PATH_OR_NAME",
                   help="with --endpoint: the model name sent to it (default 'teacher'); "
                        "else: the teacher's checkpoint directory or Hugging Face path "
                        "(default: the config's model.path)")
    p.add_argument("--engine", choices=["hf", "vllm"], default=None,
                   help="rollout engine for --model (default: the config's rollout.engine)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=None, help=DEVICE_HELP)
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the endpoint's API key")
    p.add_argument("--samples", type=int, default=1, help="trajectories per prompt")
    p.add_argument("--max-tool-calls", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="endpoint: per completion request; engine: the trajectory's response "
                        "budget, tool output included")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=8,
                   help="endpoint: requests in flight; engine: trajectories per rollout batch "
                        "(rows are written after each batch)")
    p.add_argument("--seed", type=int, default=0, help="engine sampling seed")
    p.add_argument("--max-prompts", type=int, default=0, help="first N prompts only (0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=run_synth)


def register(sub) -> None:
    desc = "Inspect, curate and synthesise SFT trajectories (stats, curate, synth, synthetic)."
    parser = sub.add_parser("data", help=desc, description=desc)
    dsub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("stats", help="interaction density of an SFT file: histogram + table "
                                      "(a prompt / eval file: sources, answers, lengths)")
    p.add_argument("file")
    p.add_argument("--png", default=None, metavar="OUT", help="also draw histograms to a PNG")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the summary as JSON")
    _add_stat_args(p)
    p.set_defaults(func=run_stats)

    p = dsub.add_parser("curate", help="filter an SFT file by interaction density, sample a size")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--min-tool-calls", type=int, default=9,
                   help="keep trajectories with at least N tool calls (default 9, the paper's)")
    p.add_argument("--size", type=int, default=0, help="sample this many rows (0: all)")
    p.add_argument("--max-tokens", type=int, default=0, help="drop longer ones (0: no limit)")
    p.add_argument("--dedup", action="store_true", help="keep one trajectory per problem")
    p.add_argument("--keep-incorrect", action="store_true",
                   help="keep trajectories whose final answer is wrong")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    _add_stat_args(p)
    p.set_defaults(func=run_curate)

    _register_synth(dsub)

    p = dsub.add_parser("synthetic", help="write the tiny task's SFT/RL/eval splits as jsonl")
    p.add_argument("out_dir")
    add_run_args(p)
    p.set_defaults(func=run_synthetic)
