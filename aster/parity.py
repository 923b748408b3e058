"""The fixed-seed parity suite (`aster parity record` / `compare`).

Runs the same small computations on whatever backend is current, from fixed seeds, and
records scalar fingerprints of them: the kernels (token log-probs with entropy and gradients,
the clipped policy loss), one SFT step and one GRPO step of a tiny Qwen3 model (loss, grad
norm, log-probs of a fixed batch after the step, checksums of the updated weights). Two
records — from two machines, or two backends — are compared quantity by quantity against
tolerances written down per dtype (aster.parity_record: records, tolerances, the compare).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path

import torch

from aster import kernels
from aster.algo.loss import PolicyForward, build_micro_batch, policy_logprobs
from aster.backend import current_backend
from aster.config import load_config
from aster.errors import AsterUserError
from aster.parity_record import weight_checksums
from aster.rollout.agent import Trajectory
from aster.train.common import TrainContext
from aster.train.rl import learn_from_rollouts, start_rl_stage, trajectory_logprobs
from aster.train.strategy import build_strategy

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
SEED = 1234
VOCAB, SEQ, BATCH = 101, 24, 4


def _tiny_model(dtype: torch.dtype, device: torch.device):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(SEED)
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, intermediate_size=96,
                      vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False,
                      attn_implementation="eager")
    return Qwen3ForCausalLM(cfg).to(device=device, dtype=dtype)


def _fixed_batch():
    """Prompts, responses and loss masks (a tool-output span masked out) from a fixed seed."""
    gen = torch.Generator().manual_seed(SEED + 1)
    prompts, responses, masks = [], [], []
    for b in range(BATCH):
        p_len, r_len = 5 + b, SEQ - 5 - 2 * b
        prompts.append(torch.randint(0, VOCAB, (p_len,), generator=gen).tolist())
        responses.append(torch.randint(0, VOCAB, (r_len,), generator=gen).tolist())
        mask = [1] * r_len
        mask[2:5] = [0, 0, 0]  # a tool response inside the trajectory
        masks.append(mask)
    return prompts, responses, masks


def _checksums(model: torch.nn.Module) -> dict[str, float]:
    return weight_checksums(model)


def _grad_norm(model: torch.nn.Module) -> float:
    return torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters()
                          if p.grad is not None)).item()


def kernel_quantities(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """token_logprobs (values, entropy, gradients) and clipped_policy_loss on fixed inputs."""
    gen = torch.Generator().manual_seed(SEED + 2)
    n, h, v = 37, 48, 211  # odd sizes on purpose
    hidden = (torch.randn(n, h, generator=gen) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 0.2).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen).to(device)
    logp, ent = kernels.token_logprobs(hidden, weight, labels, temperature=0.7,
                                       return_entropy=True)
    (logp.sum() + 0.1 * ent.sum()).backward()
    old = logp.detach() + (torch.randn(n, generator=gen) * 0.2).to(device)
    adv = torch.randn(n, generator=gen).to(device)
    mask = (torch.rand(n, generator=gen) > 0.2).to(device, torch.float32)
    lp = logp.detach().clone().requires_grad_()
    loss, metrics = kernels.clipped_policy_loss(lp, old, adv, mask, num_tokens=int(mask.sum()))
    loss.backward()
    return {"logp_sum": logp.sum().item(), "entropy_sum": ent.sum().item(),
            "grad_hidden_abs_sum": hidden.grad.double().abs().sum().item(),
            "grad_weight_abs_sum": weight.grad.double().abs().sum().item(),
            "policy_loss": loss.item(), "policy_grad_abs_sum": lp.grad.abs().sum().item(),
            "clip_frac_upper": float(metrics["clip_frac_upper"]),
            "clip_frac_lower": float(metrics["clip_frac_lower"]),
            "approx_kl": float(metrics["approx_kl"])}


def _step(model, loss: torch.Tensor, mb) -> dict[str, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss.backward()
    out = {"loss": loss.item(), "grad_norm": _grad_norm(model)}
    opt.step()
    with torch.no_grad():
        out["logp_after_sum"] = policy_logprobs(PolicyForward(model), mb, 1.0).sum().item()
    return {**out, **_checksums(model)}


def sft_step_quantities(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """One SFT step: token-mean NLL over assistant (loss-mask 1) tokens, AdamW."""
    model = _tiny_model(dtype, device)
    prompts, responses, masks = _fixed_batch()
    mb = build_micro_batch(prompts, responses, masks, device=device)
    logp = policy_logprobs(PolicyForward(model), mb, 1.0)
    return _step(model, -logp.sum() / mb.num_tokens, mb)


# The GRPO step's settings: one group of 4 trajectories (24, 23, 22 and 21 tokens), one
# optimizer step over 2 packed micro batches of 45 tokens, old log-probs taken from the stored
# rollout (rl.old_logp=rollout), AdamW lr 1e-3.
GRPO_STEP = ["rl.group_size=4", "rl.prompts_per_step=1", "rl.mini_batch_prompts=1",
             "rl.max_tokens_per_micro_batch=47", "rl.ppo_epochs=1", "rl.old_logp=rollout",
             "rl.lr=1e-3",
             "rl.weight_decay=0", "rl.loss=grpo", "rollout.temperature=1.0",
             # the population std: the convention the goldens in tests/parity/golden hold
             "rl.adv_std=population"]


class _PadOnly:
    """The one tokenizer attribute the update reads (token ids are given, never re-encoded)."""

    pad_token_id = 0


def grpo_step_quantities(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """One GRPO step through the trainer's own code on a stored rollout: rl.learn_from_rollouts
    (group advantages, old log-probs, rl.policy_update with its micro batches, global
    normaliser, objective and Updater: gradient clipping, AdamW). The rollout's log-probs are
    the policy's own shifted by a fixed pattern, as an engine's would differ, so ratios leave 1
    and both clips engage."""
    model = _tiny_model(dtype, device)
    backend = current_backend()
    cfg = load_config(None, GRPO_STEP)
    policy = PolicyForward(model, backend.kernel_impl)
    run_dir = Path(tempfile.mkdtemp(prefix="aster-parity-"))  # no checkpoint to resume from
    ctx = TrainContext(cfg=cfg, backend=backend, policy=policy, hf_model=model,
                       tokenizer=_PadOnly(), run_dir=run_dir,
                       strategy=build_strategy(cfg.distributed, backend, torch.float32))
    prompts, responses, masks = _fixed_batch()
    trajs = [Trajectory(prompt_ids=p, response_ids=r, loss_mask=m, rollout_logprobs=[0.0] * len(r),
                        reward=reward)
             for p, r, m, reward in zip(prompts, responses, masks, [1.0, 0.0, 0.0, 0.0])]
    own = trajectory_logprobs(ctx, trajs, 1.0)
    flat = 0
    for traj, lp in zip(trajs, own):
        trained = torch.nonzero(torch.tensor(traj.loss_mask)).view(-1)
        shift = ((torch.arange(flat, flat + trained.numel()) % 5 - 2) * 0.15).to(lp.dtype)
        lp[trained] += shift
        traj.rollout_logprobs, flat = lp.tolist(), flat + trained.numel()
    stage = start_rl_stage(ctx, "grpo_step", cfg.rl.stage1, 1, warmup_steps=0)
    upd = learn_from_rollouts(stage, trajs, "parity grpo_step", None)["metrics"]
    shutil.rmtree(run_dir, ignore_errors=True)
    mb = build_micro_batch(prompts, responses, masks, device=device)
    with torch.no_grad():
        after = policy_logprobs(PolicyForward(model), mb, 1.0).sum().item()
    return {"loss": upd["loss"], "grad_norm": upd["grad_norm"], "logp_after_sum": after,
            **_checksums(model), "clip_frac_upper": upd["clip_frac_upper"],
            "clip_frac_lower": upd["clip_frac_lower"]}


SUITE = {"kernels": kernel_quantities, "sft_step": sft_step_quantities,
         "grpo_step": grpo_step_quantities}


def record_suite(backend, dtypes: list[str]) -> dict:
    """Run the suite on `backend` for each dtype; a dtype the device cannot run is recorded
    as skipped with the reason, not silently dropped."""
    device = backend.device()
    record = {"kind": "suite", "device": backend.name, "kernel_impl": backend.kernel_impl,
              "torch": torch.__version__, "host": platform.node(), "seed": SEED, "results": {}}
    unknown = [name for name in dtypes if name not in DTYPES]
    if unknown:
        raise AsterUserError(f"--dtypes: {unknown[0]!r} is not one of {', '.join(DTYPES)}")
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for name in dtypes:
            try:
                record["results"][name] = {
                    f"{part}.{key}": val for part, fn in SUITE.items()
                    for key, val in fn(DTYPES[name], device).items()}
            except Exception as exc:  # noqa: BLE001 - recorded, and compare reports it
                # A dtype the device cannot run: no float64 matmul (RuntimeError), a kernel
                # that does not compile (triton's CompilationError is no RuntimeError), ...
                record["results"][name] = {"skipped": _reason(exc)}
    finally:  # the caller's determinism setting is theirs
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    return record


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
