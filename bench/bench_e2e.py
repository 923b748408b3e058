"""End-to-end section of bench/throughput.py: one full GRPO step through the real trainer.

`aster.train.rl.rl_step` as `aster rl` runs it: rollouts through the agent loop and the real
sandbox -> rewards -> group advantages -> the balanced plan -> old log-probs (skipped: one
update per step, rl.old_logp=auto) -> clipped-loss update on packed micro batches -> weights
pushed to the rollout engine. Reported per step: the time split rollout (of which tools) /
old log-probs / update / weight sync, tokens/s, MFU of the training phases where the
backend's peak is known, peak memory; next to a baseline where only the policy differs: a
plain transformers forward ([B, T, V] logits, log_softmax, gather) instead of aster's kernels.

The random model never writes a tool call, so rollouts run through bench_rollout's
ToolDenseEngine: each turn is `think` tokens really sampled, then a fixed code_interpreter
call that the sandbox really executes, `calls` rounds, then a boxed answer. Every trajectory
has the same length, so both variants train on the same number of tokens.

Model: the tiny config on CPU; Qwen3-4B's shapes (random weights, in-process tokenizer) on
GPU/NPU; `--model CONFIG` (throughput.py; env ASTER_BENCH_MODEL) takes that config's model.

    python bench/bench_e2e.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import ToolDenseEngine  # noqa: E402  (bench/ is not a package)

# Qwen3-4B: hidden 2560, 36 layers, 32 / 8 heads of 128, MLP 9728, vocab 151936
QWEN3_4B = dict(hidden_size=2560, num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
                intermediate_size=9728, vocab_size=151936)


class FullLogitsPolicy(torch.nn.Module):
    """The baseline policy: PolicyForward's signature, computed the usual way (full logits,
    under autocast to the compute dtype like a transformers Trainer with bf16=True)."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.compute_dtype = model, compute_dtype

    def forward(self, input_ids, attention_mask, rows, cols, labels, *, temperature=1.0,
                return_entropy=False, position_ids=None, head=None):
        if head is not None:  # LogpObjective hands out none: a plain forward has no hidden
            raise ValueError("the full-logits baseline takes no fused head")
        with torch.autocast(input_ids.device.type, dtype=self.compute_dtype,
                            enabled=self.compute_dtype != torch.float32):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids, use_cache=False).logits.float()
        logp_all = torch.log_softmax(logits / temperature, dim=-1)[rows, cols]
        logp = logp_all.gather(-1, labels[:, None]).squeeze(-1)
        if not return_entropy:
            return logp
        return logp, -(logp_all.exp() * logp_all).sum(-1)


class LogpObjective:
    """The stage's objective run on the policy's log-probs only (no fused head: a plain
    forward has no hidden states to hand it), for the baseline step."""

    def __init__(self, objective):
        self.objective = objective

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, *args, **kwargs):
        return self.objective(*args, **kwargs)

    def fused_head(self, *args, **kwargs):
        return None


def _sizes(backend, quick: bool) -> dict:
    if backend.device_type == "cpu":
        return dict(prompts=2, group=4, think=16, calls=2) if quick else \
            dict(prompts=4, group=4, think=32, calls=3)
    return dict(prompts=8, group=8, think=128, calls=4) if quick else \
        dict(prompts=32, group=8, think=512, calls=8)


def _config(backend, quick: bool, sizes: dict):
    from aster.config import load_config

    name = os.environ.get("ASTER_BENCH_MODEL") or "tiny"
    overrides = [f"rl.prompts_per_step={sizes['prompts']}", f"rl.group_size={sizes['group']}",
                 f"rl.mini_batch_prompts={sizes['prompts']}",
                 "rl.max_tokens_per_micro_batch="
                 + ("4096" if backend.device_type == "cpu" else "16384"),
                 "rl.ppo_epochs=1", "rollout.max_concurrency=256", "sandbox.max_sessions=256",
                 "rollout.engine=" + ("hf" if backend.device_type == "cpu" else "auto"),
                 f"rollout.max_tool_calls={sizes['calls'] + 1}",
                 f"rollout.max_response_tokens={_max_tokens(sizes)}",
                 "distributed.strategy=none", "logging.tensorboard=false", "run.seed=0"]
    cfg = load_config(name, overrides)
    if backend.device_type != "cpu" and not os.environ.get("ASTER_BENCH_MODEL"):
        layers = 4 if quick else QWEN3_4B["num_layers"]
        for key, value in {**QWEN3_4B, "num_layers": layers}.items():
            setattr(cfg.model.tiny, key, value)
        cfg.model.dtype = "bfloat16"
    return cfg


def _max_tokens(sizes: dict) -> int:
    return (sizes["calls"] + 1) * (sizes["think"] + 160) + 64  # thinking, call, tool output


def _model_dir(cfg, workdir: Path) -> str:
    if cfg.model.path:
        return cfg.model.path
    from aster.tiny_model import build_tiny_model

    return str(build_tiny_model(workdir / "model", cfg.model.tiny, seed=cfg.run.seed))


def _reset_peak(backend) -> None:
    if backend.device_type != "cpu":
        torch.get_device_module(backend.device_type).reset_peak_memory_stats()


def _row(label: str, m: dict, n_params: int, peak) -> dict:
    train_s = m["time_old_logp_s"] + m["time_update_s"]
    step_s = m["time_rollout_s"] + train_s + m["time_weight_sync_s"]
    tokens = m["tokens"]
    # update forward/backward (6) + the old log-probs forward (2) unless rl.old_logp=auto
    # skipped it (one update per step: no entropy measured then)
    flops = (8 if m.get("entropy") is not None else 6) * n_params * tokens
    # step_tokens, not tokens: lengths vary slightly with sampling, and throughput.py's
    # --compare matches rows on `tokens`
    return {"workload": label, "trajectories": m["trajectories"], "step_tokens": tokens,
            "tool_calls": m["tool_calls_mean"] * m["trajectories"], "step_s": step_s,
            "rollout_s": m["time_rollout_s"], "tools_s": m["time_tools_s"],
            "old_logp_s": m["time_old_logp_s"], "update_s": m["time_update_s"],
            "weight_sync_s": m["time_weight_sync_s"], "tokens_per_s": tokens / step_s,
            "train_tokens_per_s": tokens / train_s,
            "train_mfu": flops / train_s / peak if peak else None,
            "peak_mem_gib": m.get("mem_peak_gib")}


def _steps(ctx, engine_for, prompts, cfg, backend) -> list[tuple[str, dict]]:
    """A warm-up step, then one measured step per policy (aster's kernels, the baseline)."""
    from dataclasses import replace

    from aster.train.config import RLStageConfig
    from aster.train.rl import rl_step, start_rl_stage
    from aster.train.rollouts import push_weights

    stage_cfg = RLStageConfig(max_response_tokens=cfg.rollout.max_response_tokens)
    # the trainer's own RL set-up: the objective rl.loss names, AdamW, schedule, Updater
    stage = start_rl_stage(ctx, "rl_stage1", stage_cfg, 10, warmup_steps=0)
    push_weights(stage, engine_for(0))
    baseline = replace(stage, policy=FullLogitsPolicy(stage.hf_model, stage.compute_dtype),
                       objective=LogpObjective(stage.objective))
    runs = [("warm-up", stage), ("grpo step, aster kernels", stage),
            ("grpo step, baseline (full logits)", baseline)]
    out = []
    for step, (label, run) in enumerate(runs):
        _reset_peak(backend)
        backend.synchronize()
        metrics, _ = rl_step(run, engine_for(step), prompts, "rl_stage1", stage_cfg, step, None)
        # prompt + response tokens (rl_step reports them as a rate over rollout + train)
        metrics["tokens"] = round(metrics["tokens_per_s"] * (metrics["time_rollout_s"]
                                                             + metrics["time_train_s"]))
        out.append((label, metrics))
    return out[1:]


def run(backend, quick: bool) -> dict:
    """One full GRPO step, aster kernels vs a plain transformers forward."""
    from aster.sandbox import SandboxPool
    from aster.train.pipeline import make_context
    from aster.train.rollouts import make_engine

    sizes = _sizes(backend, quick)
    cfg = _config(backend, quick, sizes)
    workdir = Path(tempfile.mkdtemp(prefix="aster-bench-e2e-"))
    t0 = time.perf_counter()
    model_dir = _model_dir(cfg, workdir)
    prompts = [{"prompt": f"What is {i} * 3 + 1?", "answer": str(3 * i + 1)}
               for i in range(3 * sizes["prompts"])]
    with SandboxPool(cfg.sandbox) as pool:
        ctx = make_context(cfg, backend, model_dir, workdir, None, pool=pool)
        engine = make_engine(ctx, model_dir, max_model_len=_max_tokens(sizes) + 512)
        setup_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in ctx.hf_model.parameters())
        tokenizer = ctx.tokenizer

        def engine_for(_step):  # a fresh wrapper per step: it counts turns from its prompts
            return ToolDenseEngine(engine, tokenizer, sizes["think"], sizes["calls"])

        try:
            results = _steps(ctx, engine_for, prompts, cfg, backend)
        finally:
            engine.close()
    peak = backend.peak_flops(ctx.compute_dtype)
    rows = [_row(label, m, n_params, peak) for label, m in results]
    rows[0]["speedup_vs_baseline"] = rows[1]["step_s"] / rows[0]["step_s"]
    rows[0]["train_speedup_vs_baseline"] = (rows[1]["old_logp_s"] + rows[1]["update_s"]) / \
        (rows[0]["old_logp_s"] + rows[0]["update_s"])
    notes = [f"model {model_dir if cfg.model.path else vars(cfg.model.tiny)} "
             f"({n_params / 1e6:.1f}M params, {cfg.model.dtype}); engine {engine.name}; "
             f"kernels {backend.kernel_impl}; setup {setup_s:.1f}s",
             f"{sizes['prompts']} prompts x G={sizes['group']}; each trajectory: "
             f"{sizes['calls']} turns of {sizes['think']} sampled tokens + a sandbox call, then "
             "an answer (ToolDenseEngine); one warm-up step before the measured ones",
             "step_s = rollout (generation, tools, rewards) + old log-probs + update + weight "
             "sync; tools_s is the sandbox's busy time inside the rollout",
             "train_mfu: (6 + 2 when the old log-probs ran) * params * tokens / (old "
             "log-probs + update) / backend peak; one mini batch per step: rl.old_logp=auto "
             "skips the old log-probs pass",
             "baseline: the same step with a plain transformers forward ([B, T, V] logits) "
             "as the policy; rollout, tools and sync are shared code",
             "the tiny model's vocabulary (1024) makes full logits cheap on CPU; aster's "
             "kernels pay off at real vocabularies (kernels and training sections)"]
    return {"section": "e2e", "rows": rows, "notes": notes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from aster.backend import select_backend

    for row in run(select_backend(args.device), args.quick)["rows"]:
        print(row)
