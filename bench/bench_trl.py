"""TRL comparison section of bench/throughput.py: one GRPO step of TRL's GRPOTrainer next to
one of aster's, on the same tiny model, prompts and batch (runs when `trl` is installed).

The same work on both sides: `prompts` prompts x G=`group` samples, up to `tokens` new tokens
each at temperature 1 (the random tiny model rarely stops early), rendered with the model's own
chat template and aster's tool system prompt (TRL gets the rendered text, so both prefill the
same tokens), a binary outcome reward (aster.reward.score), token-mean clipped loss with
clip-higher (TRL: loss_type="dapo", epsilon 0.2 / epsilon_high 0.28, beta 0: no reference
model), one optimizer step per generation (TRL over micro batches of `micro` completions,
aster over packed micro batches under the tiny config's rl.max_tokens_per_micro_batch), torch
threads fixed. One warm-up step each, then the measured step; aster's step is the trainer's
own `rl_step` (rollouts through the agent loop, rewards, advantages, old log-probs, update,
weight sync), TRL's is `Trainer.train` over one step (generation, rewards, update).

Both skip the old log-probs pass (one optimizer step per generation: TRL by construction,
aster with rl.old_logp=auto). What remains different: aster's rollouts run through the agent
loop with a sandbox pool open (no tool is called here).

    python bench/bench_trl.py [--quick]     # or: python bench/throughput.py --sections trl
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {True: dict(prompts=4, group=8, tokens=32, micro=16),
         False: dict(prompts=16, group=8, tokens=128, micro=16)}
THREADS = 2


def _prompts(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} * {3 * i + 7} + {i * i}?",
             "answer": str(i * (3 * i + 7) + i * i)} for i in range(n)]


def _aster_step(model_dir: str, sizes: dict, workdir: Path) -> tuple[float, dict]:
    """Seconds of aster's measured GRPO step (after a warm-up) and its time split."""
    from aster.backend import select_backend
    from aster.config import load_config
    from aster.sandbox import SandboxPool
    from aster.train.config import RLStageConfig
    from aster.train.pipeline import make_context
    from aster.train.rl import rl_step, start_rl_stage
    from aster.train.rollouts import make_engine, push_weights

    backend = select_backend("cpu")
    cfg = load_config("tiny", [
        f"rl.prompts_per_step={sizes['prompts']}", f"rl.group_size={sizes['group']}",
        f"rl.mini_batch_prompts={sizes['prompts']}", "rl.ppo_epochs=1", "rl.clip_low=0.2", "rl.clip_high=0.28", "rollout.engine=hf",
        f"rollout.max_concurrency={sizes['prompts'] * sizes['group']}",
        f"sandbox.max_sessions={max(128, sizes['prompts'] * sizes['group'])}",
        f"rollout.max_response_tokens={sizes['tokens']}", "rollout.temperature=1.0",
        "distributed.strategy=none", "logging.tensorboard=false", "run.seed=0"])
    stage_cfg = RLStageConfig(max_response_tokens=sizes["tokens"])
    prompts = _prompts(sizes["prompts"])
    with SandboxPool(cfg.sandbox) as pool:
        ctx = make_context(cfg, backend, model_dir, workdir, None, pool=pool)
        engine = make_engine(ctx, model_dir)
        try:
            # the trainer's own RL set-up: objective, AdamW, schedule, Updater
            stage = start_rl_stage(ctx, "rl_stage1", stage_cfg, 10, warmup_steps=0)
            push_weights(stage, engine)
            for step in range(2):
                t0 = time.perf_counter()
                metrics, _ = rl_step(stage, engine, prompts, "rl_stage1", stage_cfg, step, None)
                seconds = time.perf_counter() - t0
        finally:
            engine.close()
    split = {k: metrics[k] for k in ("time_rollout_s", "time_old_logp_s", "time_update_s",
                                     "time_weight_sync_s") if k in metrics}
    return seconds, split


class _StepTimer:
    """A transformers TrainerCallback recording each optimizer step's wall time."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(time.perf_counter() - timer.start)

        self.steps: list[float] = []
        self.start = 0.0
        self.callback = Callback()


def _trl_step(model_dir: str, sizes: dict, workdir: Path) -> float:
    """Seconds of TRL GRPOTrainer's second optimizer step (the first is the warm-up)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from aster.reward import score
    from aster.rollout.chat import encode_prompt, prompt_messages

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    rows = _prompts(sizes["prompts"])
    # aster's rendering (chat template with the tool system prompt), as text for TRL
    texts = [tokenizer.decode(encode_prompt(tokenizer, prompt_messages(r["prompt"])))
             for r in rows]
    dataset = Dataset.from_dict({"prompt": texts * 2, "answer": [r["answer"] for r in rows] * 2})

    def reward(completions, answer, **_):
        return [score(c, a) for c, a in zip(completions, answer)]

    batch = sizes["prompts"] * sizes["group"]
    args = GRPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=sizes["micro"],
        gradient_accumulation_steps=batch // sizes["micro"], num_generations=sizes["group"],
        max_completion_length=sizes["tokens"], temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", num_iterations=1,
        learning_rate=5e-4, max_steps=2, shuffle_dataset=False, use_cpu=True, bf16=False,
        report_to="none", logging_steps=1000, save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = _StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer.callback])
    trainer.train()
    return timer.steps[-1]


def run(backend=None, quick: bool = True) -> dict:
    """aster's GRPO step vs TRL's GRPOTrainer step on the same work; CPU only."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        return {"section": "trl", "rows": [],
                "notes": ["not available: pip install trl (and datasets) to compare"]}
    if backend is not None and getattr(backend, "device_type", "cpu") != "cpu":
        return {"section": "trl", "rows": [], "notes": ["CPU only (the tiny model, 2 threads)"]}
    from importlib.metadata import version

    from aster.config import load_config
    from aster.tiny_model import build_tiny_model

    sizes = SIZES[quick]
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    workdir = Path(tempfile.mkdtemp(prefix="aster-bench-trl-"))
    try:
        model_dir = str(build_tiny_model(workdir / "model", load_config("tiny", []).model.tiny,
                                         seed=0))
        aster_s, split = _aster_step(model_dir, sizes, workdir)
        trl_s = _trl_step(model_dir, sizes, workdir)
    finally:
        torch.set_num_threads(threads)
    work = f"{sizes['prompts']} prompts x {sizes['group']}, {sizes['tokens']} new tokens"
    rows = [{"workload": work, "aster_step_s": aster_s, "trl_step_s": trl_s,
             "trl_over_aster": trl_s / aster_s,
             **{f"aster_{k.removeprefix('time_')}": v for k, v in split.items()}}]
    budget = load_config("tiny", []).rl.max_tokens_per_micro_batch
    notes = [f"trl {version('trl')}, tiny model, torch threads {THREADS}, TRL micro batches "
             f"of {sizes['micro']} completions, aster's packed under {budget} tokens; "
             f"{os.cpu_count()} CPU cores",
             "trl_over_aster > 1: aster's step is that many times faster"]
    return {"section": "trl", "rows": rows, "notes": notes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    cli = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = run(None, cli.quick)
    for row in result["rows"]:
        print(row)
    for note in result["notes"]:
        print("note:", note)
