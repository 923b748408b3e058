"""The 2-process gloo tests' runner.

    python _dist_worker.py PORT OUT_DIR MODEL_DIR STRATEGY[,STRATEGY...]

imports everything once, runs the single-process reference (strategy none, OUT_DIR/reference),
then forks 2 ranks that join a gloo process group and run every STRATEGY in turn (none, ddp,
fsdp2 or deepspeed-<zero stage>; OUT_DIR/<strategy>). Forking a process that has imported
torch and transformers costs nothing, where fresh interpreters would each pay the imports.

Each run trains 2 SFT steps on the same 8 conversations and writes, on rank 0, result.json
(per-step loss and grad norm, and how far the saved Hugging Face model is from the trained
weights) and weights.pt (the full updated weights); then it checks a
checkpoint round trip on every rank: RNG draws after save_checkpoint equal the draws after
load_checkpoint, and the weights are unchanged (rank<R>.json). Then, from the base model again,
one GRPO policy update on fixed trajectories (<strategy>/rl/: result.json, weights.pt), and the
same with gspo, a KL penalty and an entropy bonus (<strategy>/rl-kl/); under
DeepSpeed, the NaN guard (<strategy>/nan-loss/, nan-grad/: rank<R>.json). Last, 10 SFT steps
at lr 1e-6 in bf16 compute (<strategy>/bf16/: the fp32 masters), against the same steps in fp32
in one process (reference/fp32/).
"""

import contextlib
import importlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # run as a script: `tests` importable


def max_abs_diff(a: dict, b: dict, rename=lambda k: k) -> float:
    """Largest |a - b| over the tensors of `a` (NaN if any difference is NaN)."""
    return torch.stack([(a[k].float() - b[rename(k)].float()).abs().max() for k in a]).max().item()


def conversations(n):
    from aster.data.formats import CODE_INTERPRETER_TOOL, make_call

    out = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        out.append({"messages": [
            {"role": "user", "content": f"What is {a}*{b}?"},
            {"role": "assistant", "content": "<think>\nuse python\n</think>",
             "tool_calls": [make_call(f"x = {a}*{b}\nprint(x)")]},
            {"role": "tool", "content": str(a * b)},
            # reasoning in the last turn too, as real rows have it (with an empty think block
            # here, one q_proj element whose gradient sits near AdamW's eps moved 1.2e-4 apart
            # under ZeRO-3: reduction order amplified by g / (|g| + eps), not a wrong gradient)
            {"role": "assistant", "content": f"<think>\nso\n</think>\n\n\\boxed{{{a * b}}}"}],
            "tools": [CODE_INTERPRETER_TOOL]})
    return out


def overrides(strategy: str, out: Path) -> list[str]:
    base = ["sft.epochs=1", "sft.global_batch_size=4", "sft.micro_batch_size=1",
            "sft.warmup_ratio=0", "sft.lr=1e-2", "logging.tensorboard=false"]
    if not strategy.startswith("deepspeed"):
        return [*base, f"distributed.strategy={strategy}"]
    stage = int(strategy.rsplit("-", 1)[1])
    # the tiny model's tensors are all below ZeRO-3's default persistence threshold (1e5
    # elements): without this nothing would be partitioned
    extra = out / "ds_extra.json"
    extra.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    return [*base, "distributed.strategy=deepspeed", f"distributed.zero_stage={stage}",
            f"distributed.deepspeed_config={extra}"]


# population std (advantages +-1): the scale these split-invariance checks were calibrated at.
# At rl.lr=1e-2 AdamW's near-sign step turns summation-order noise in tiny gradient elements
# into 1e-2 weight moves; the sample std's +-0.707 put more elements there and pushed the 2nd
# epoch's loss 2e-5 (rel) apart under ddp. The std is per group, computed the same on every
# rank: nothing distributed depends on the convention. Micro batches of up to 40 tokens: one
# to three of the 11-26-token trajectories packed per forward.
RL = ["rl.prompts_per_step=4", "rl.mini_batch_prompts=4", "rl.group_size=2", "rl.ppo_epochs=2",
      "rl.max_tokens_per_micro_batch=40", "rl.lr=1e-2", "rl.old_logp=recompute",
      "rl.adv_std=population"]
# the same update with a sequence-level objective (its normaliser counts sequences on every
# rank), the KL penalty to a frozen reference policy (sharded like the policy) and the entropy
# bonus: <strategy>/rl-kl/
RL_KL = ["rl.loss=gspo", "rl.clip_low=0.05", "rl.clip_high=0.08", "rl.kl_coef=0.5",
         "rl.kl_estimator=k3", "rl.entropy_coef=0.01"]
REWARDS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]  # group 2: zero advantage


def trajectories(vocab: int) -> list:
    """4 prompts x 2 samples with uneven lengths and masked (tool) tokens, the same everywhere."""
    from aster.rollout.agent import Trajectory

    gen = torch.Generator().manual_seed(0)
    out = []
    for p, rewards in enumerate(REWARDS):
        prompt = torch.randint(3, vocab, (5 + p,), generator=gen).tolist()
        for g, reward in enumerate(rewards):
            n = 6 + 3 * p + 2 * g
            mask = [0 if 3 <= i < 5 else 1 for i in range(n)]
            out.append(Trajectory(prompt_ids=prompt, reward=reward, loss_mask=mask,
                                  response_ids=torch.randint(3, vocab, (n,), generator=gen).tolist(),
                                  rollout_logprobs=[0.0] * n))
    return out


def run_rl(strategy, backend, rank, world, out, model_dir, extra=()):
    """One GRPO policy update (one mini batch holding every prompt, 2 PPO epochs = 2 optimizer
    steps) on this rank's prompts: the global batch is the same for every world size. A
    configuration aster refuses writes {"refused": its message}."""
    from aster.algo import shard_for_rank
    from aster.config import load_config
    from aster.errors import AsterUserError
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.rl import learn_from_rollouts, start_rl_stage
    from aster.train.strategy import full_state_dict

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [*overrides(strategy, out), *RL, *extra])
    ctx = make_context(cfg, backend, model_dir, out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    try:
        ctx = start_rl_stage(ctx, "rl", cfg.rl.stage1, 10, warmup_steps=0)
    except AsterUserError as exc:
        if rank == 0:
            (out / "result.json").write_text(json.dumps({"refused": str(exc)}))
        return
    everything = trajectories(ctx.hf_model.config.vocab_size)
    mine = [everything[2 * p + g] for p in shard_for_rank(list(range(4)), rank, world)
            for g in range(2)]
    # advantages, the balanced plan (trajectories may train on the other rank), old and
    # reference log-probs, 2 PPO epochs
    stats = learn_from_rollouts(ctx, mine, "rl", None)["metrics"]
    weights = full_state_dict(ctx.policy)
    if rank == 0:
        torch.save(weights, out / "weights.pt")
        (out / "result.json").write_text(json.dumps(stats))


def run_nan(strategy, backend, rank, out, model_dir, kind):
    """Step 2 poisoned: a NaN loss ("loss"), or a finite loss with NaN gradients ("grad"). The
    guard must stop the run naming the step-1 checkpoint, with the step-1 weights untouched."""
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train import sft
    from aster.train.checkpoint import list_checkpoints
    from aster.train.common import TrainingDivergedError
    from aster.train.pipeline import make_context
    from aster.train.strategy import full_state_dict

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [*overrides(strategy, out), "sft.save_every_steps=1"])
    ctx = make_context(cfg, backend, model_dir, out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    data, _ = sft.encode_dataset(ctx.tokenizer, conversations(8), 1024)
    real, seen = sft.sft_micro_loss, {}

    def poisoned(policy, batch, num_tokens):
        if not list_checkpoints(ctx.ckpt_dir("sft")):
            return real(policy, batch, num_tokens)
        if "weights" not in seen:  # the first micro batch of step 2, on every rank
            seen["weights"] = full_state_dict(ctx.policy)
        if kind == "loss":
            return real(policy, batch, num_tokens) * float("nan")
        logp = policy(batch["input_ids"], batch["attention_mask"], batch["rows"],
                      batch["cols"], batch["labels"], position_ids=batch["position_ids"])
        # forward: + 0; backward: 0 * d sqrt(x)/dx at 0 = 0 * inf = NaN into every gradient
        return -logp.sum() / num_tokens + 0 * torch.sqrt(logp - logp.detach()).sum()

    sft.sft_micro_loss = poisoned
    try:
        sft.run_sft(ctx, data)
        message = "no error"
    except TrainingDivergedError as exc:
        message = str(exc)
    finally:
        sft.sft_micro_loss = real
    after = full_state_dict(ctx.policy)
    moved = max_abs_diff(after, seen["weights"]) if rank == 0 else 0.0
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"message": message, "moved": moved,
         "checkpoints": [c.name for c in list_checkpoints(ctx.ckpt_dir("sft"))]}))


# 10 AdamW steps at RL's lr 1e-6 (8 conversations, global batch 4, 5 epochs)
PRECISION = ["sft.lr=1e-6", "sft.epochs=5", "sft.global_batch_size=4", "sft.warmup_ratio=0",
             "checkpoint.keep_last=1"]


def master_weights(ctx) -> dict:
    """The fp32 master weights the optimizer steps, in full (collective): the parameters
    under none / ddp / fsdp2, DeepSpeed's fp32 partitions under its bf16 mode."""
    from aster.train.strategy import full_state_dict
    from aster.train.strategy.deepspeed import is_engine

    if not is_engine(ctx.policy):
        return {k: v.clone() for k, v in full_state_dict(ctx.policy).items()}
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(p).detach().cpu()
            for name, p in ctx.policy.module.named_parameters()}


def run_precision(strategy, backend, rank, out, model_dir, dtype="bfloat16"):
    """PRECISION's 10 steps with model.dtype=`dtype`; rank 0 writes the masters (masters.pt)
    and what the module computed in (compute.json)."""
    from aster.config import load_config
    from aster.metrics import MetricsWriter
    from aster.train.pipeline import make_context
    from aster.train.sft import encode_dataset, sft_total_steps, start_sft_stage, train_sft
    from aster.train.strategy import unwrap

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [*overrides(strategy, out), *PRECISION, f"model.dtype={dtype}"])
    ctx = make_context(cfg, backend, model_dir, out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    data, _ = encode_dataset(ctx.tokenizer, conversations(8), 1024)
    ctx = start_sft_stage(ctx, sft_total_steps(cfg.sft, len(data)))  # DeepSpeed: the engine
    train_sft(ctx, data)
    masters = master_weights(ctx)
    module_dtypes = sorted({str(p.dtype) for p in unwrap(ctx.policy).parameters()})
    if rank == 0:
        torch.save(masters, out / "masters.pt")
        (out / "compute.json").write_text(json.dumps({"module_dtypes": module_dtypes}))


def draws() -> list[float]:
    return [torch.rand(()).item(), random.random(), float(np.random.rand())]


def run_one(strategy, backend, rank, out, model_dir):
    from aster.config import load_config
    from aster.metrics import MetricsWriter, read_metrics
    from aster.train.checkpoint import load_checkpoint, save_checkpoint
    from aster.train.common import save_hf_model
    from aster.train.pipeline import make_context
    from aster.train.sft import encode_dataset, sft_total_steps, start_sft_stage, train_sft
    from aster.train.strategy import full_state_dict

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, overrides(strategy, out))
    ctx = make_context(cfg, backend, model_dir, out,
                       MetricsWriter(out, is_main=rank == 0, tensorboard=False))
    data, _ = encode_dataset(ctx.tokenizer, conversations(8), 1024)
    ctx = start_sft_stage(ctx, sft_total_steps(cfg.sft, len(data)))
    train_sft(ctx, data)
    weights = full_state_dict(ctx.policy)
    save_hf_model(ctx.hf_model, ctx.tokenizer, out / "hf", is_main=rank == 0)
    if rank == 0:
        from transformers import AutoModelForCausalLM

        torch.save(weights, out / "weights.pt")
        steps = [m for m in read_metrics(out) if m["stage"] == "sft"]
        saved = AutoModelForCausalLM.from_pretrained(out / "hf").state_dict()
        (out / "result.json").write_text(json.dumps(
            {"loss": [m["loss"] for m in steps], "grad_norm": [m["grad_norm"] for m in steps],
             "hf_export_diff": max_abs_diff(saved, weights, rename=lambda k: f"model.{k}")}))
    # checkpoint round trip: rank-dependent RNG streams, saved and restored per rank
    for _ in range(rank + 1):
        draws()
    ckpt = save_checkpoint(out / "ckpt", 99, model=ctx.policy, optimizer=ctx.optimizer,
                           scheduler=ctx.scheduler, is_main=rank == 0)
    before = draws()
    torch.manual_seed(1234 + rank), random.seed(1234), np.random.seed(1234)
    load_checkpoint(ckpt, model=ctx.policy, optimizer=ctx.optimizer, scheduler=ctx.scheduler)
    after = draws()
    reloaded = full_state_dict(ctx.policy)
    # full_state_dict is complete on rank 0 (FSDP2 leaves the other ranks' empty)
    drift = max_abs_diff(weights, reloaded) if rank == 0 else 0.0
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"before": before, "after": after, "weights_drift": drift}))


def rank_main(rank, world, port, out_dir, model_dir, strategies):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from aster.backend import select_backend

    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    backend.init_distributed()
    for strategy in strategies:
        t0 = time.perf_counter()
        run_one(strategy, backend, rank, Path(out_dir) / strategy, model_dir)
        run_rl(strategy, backend, rank, world, Path(out_dir) / strategy / "rl", model_dir)
        run_rl(strategy, backend, rank, world, Path(out_dir) / strategy / "rl-kl", model_dir,
               RL_KL)
        run_precision(strategy, backend, rank, Path(out_dir) / strategy / "bf16", model_dir)
        if strategy.startswith("deepspeed"):
            for kind in ("loss", "grad"):
                run_nan(strategy, backend, rank, Path(out_dir) / strategy / f"nan-{kind}",
                        model_dir, kind)
        print(f"rank {rank} {strategy}: {time.perf_counter() - t0:.1f}s", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(port, out_dir, model_dir, strategies):
    import aster.train.pipeline  # noqa: F401 - the imports the forked ranks inherit
    from aster.backend import select_backend
    from tests.train.ranks import fork_ranks

    t0 = time.perf_counter()
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    run_one("none", backend, 0, Path(out_dir) / "reference", model_dir)
    run_rl("none", backend, 0, 1, Path(out_dir) / "reference" / "rl", model_dir)
    run_rl("none", backend, 0, 1, Path(out_dir) / "reference" / "rl-kl", model_dir, RL_KL)
    run_precision("none", backend, 0, Path(out_dir) / "reference" / "fp32", model_dir, "float32")
    print(f"reference: {time.perf_counter() - t0:.1f}s", flush=True)
    if any(s.startswith("deepspeed") for s in strategies):
        from aster.train.strategy.deepspeed import import_deepspeed

        import_deepspeed(select_backend("cpu"))  # imported once, inherited by the ranks
        with contextlib.suppress(ImportError):  # initialize() imports it lazily (seconds)
            importlib.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    code = fork_ranks(rank_main, 2, port, out_dir, model_dir, strategies)
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread: no OpenMP pool exists when the ranks fork
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split(",")))
