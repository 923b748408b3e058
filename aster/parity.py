"""The fixed-seed parity suite (`aster parity record` / `compare`).

Runs the same small computations on whatever backend is current, from fixed seeds, and
records scalar fingerprints of them: the kernels (token log-probs with entropy and gradients,
the clipped policy loss), one SFT step and one GRPO step of a tiny Qwen3 model (loss, grad
norm, log-probs of a fixed batch after the step, checksums of the updated weights). Two
records — from two machines, or two backends — are compared quantity by quantity against
tolerances written down per dtype.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from aster import kernels
from aster.algo.loss import PolicyForward, build_micro_batch, policy_logprobs
from aster.errors import AsterUserError

# (rtol, atol) per dtype. float64: the kernels return fp32 log-probs by contract, so agreement
# is bounded by fp32 rounding of the outputs (~1e-7 relative) and then one Adam step.
# float32: different GEMM/reduction orders (MKL vs cuBLAS vs CANN) differ by ~1e-6 relative per
# op; through a 2-layer model, a backward and one optimizer step that grows to ~1e-4.
# bfloat16: 8 mantissa bits (~4e-3 per op) through the same chain.
# float16 (a model.dtype for rl_step records): 11 significant bits, between the two.
TOLERANCES = {"float64": (1e-6, 1e-8), "float32": (2e-4, 1e-5), "bfloat16": (5e-2, 2e-2),
              "float16": (1e-2, 5e-3)}
# Per-quantity overrides (fnmatch patterns on the quantity name, first match wins), e.g. the
# inputs of a replayed step: both runs read the same dumped trajectories, so their counts,
# rewards and rollout log-probs must agree exactly; any difference means a different dump.
QUANTITY_TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "input.*": {dtype: (0.0, 0.0) for dtype in TOLERANCES},
}
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


def weight_checksums(model: torch.nn.Module, prefix: str = "weights_") -> dict[str, float]:
    """Sum, absolute sum and a position-weighted sum (weights 1..7 cycling over the flattened
    parameters, so swapped or shifted values change it) of every parameter, in float64.
    Streams over parameters in chunks (no full copy of the model); sharded parameters are
    gathered one at a time (a collective: every rank calls it)."""
    sums = torch.zeros(3, dtype=torch.float64)
    offset = 0
    for param in model.parameters():
        t = param.detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        flat = t.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            part = flat[start:start + _CHUNK].double()
            pos = torch.arange(offset + start, offset + start + part.numel(),
                               device=part.device) % 7 + 1
            sums += torch.stack([part.sum(), part.abs().sum(), (part * pos).sum()]).cpu()
        offset += flat.numel()
    return {f"{prefix}sum": sums[0].item(), f"{prefix}abs_sum": sums[1].item(),
            f"{prefix}weighted_sum": sums[2].item()}


_CHUNK = 1 << 24


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
    from aster.backend import current_backend
    from aster.config import load_config
    from aster.rollout.agent import Trajectory
    from aster.train.common import TrainContext
    from aster.train.rl import learn_from_rollouts, start_rl_stage, trajectory_logprobs
    from aster.train.strategy import build_strategy

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


def skipped_dtypes(a: dict, b: dict) -> list[str]:
    """One line per dtype that one of the two records skipped (compare_records leaves those
    out, so a device that cannot run a dtype must not look like agreement)."""
    notes = []
    for dtype in sorted(set(a["results"]) | set(b["results"])):
        for name, rec in (("A", a), ("B", b)):
            values = rec["results"].get(dtype)
            if values is None:
                notes.append(f"{dtype}: not in {name}")
            elif "skipped" in values:
                notes.append(f"{dtype}: skipped in {name} ({values['skipped']})")
    return notes


def write_record(record: dict, path: str) -> None:
    """Atomic write: temp file then rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, out)


def read_record(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AsterUserError(f"parity record {path!r} not found; make one with "
                             "`aster parity record --out FILE`") from None
    except json.JSONDecodeError as exc:
        raise AsterUserError(f"parity record {path!r} is not valid JSON ({exc.msg})") from None
    if "results" not in data:
        raise AsterUserError(f"{path!r} is not a parity record (no 'results')")
    return data


def tolerance(dtype: str, quantity: str) -> tuple[float, float]:
    """(rtol, atol) for `quantity` in `dtype`: the first QUANTITY_TOLERANCES pattern that
    matches the name, else the dtype's default from TOLERANCES."""
    for pattern, per_dtype in QUANTITY_TOLERANCES.items():
        if fnmatch.fnmatchcase(quantity, pattern) and dtype in per_dtype:
            return per_dtype[dtype]
    return TOLERANCES[dtype]


def _compare_values(va, vb, rtol: float, atol: float) -> tuple:
    """(diff, tol, ok) for two scalars, or for two equal-length lists element by element
    (diff: the largest |a_i - b_i|, tol: the tolerance at that element)."""
    if isinstance(va, list) or isinstance(vb, list):
        if not (isinstance(va, list) and isinstance(vb, list)) or len(va) != len(vb):
            return None, None, False
        if not va:
            return 0.0, atol, True
        diffs = [abs(x - y) for x, y in zip(va, vb)]
        tols = [atol + rtol * max(abs(x), abs(y)) for x, y in zip(va, vb)]
        good = all(d <= t for d, t in zip(diffs, tols)) and all(map(math.isfinite, va + vb))
        worst = max(range(len(diffs)), key=lambda i: diffs[i] - tols[i])
        return diffs[worst], tols[worst], good
    diff = abs(va - vb)
    tol = atol + rtol * max(abs(va), abs(vb))
    return diff, tol, diff <= tol and math.isfinite(va) and math.isfinite(vb)


def record_kind(record: dict) -> str:
    """`suite` (aster parity record) or `rl_step` (a dumped or replayed GRPO step)."""
    return record.get("kind", "suite")


def compare_records(a: dict, b: dict) -> tuple[list[dict], bool]:
    """Every quantity present in either record: values, difference, tolerance, verdict. A
    quantity present in only one record fails. List-valued quantities (per-token or
    per-trajectory values) compare element by element."""
    if record_kind(a) != record_kind(b):
        raise AsterUserError(f"cannot compare a {record_kind(a)} record with a "
                             f"{record_kind(b)} record; compare two of the same kind")
    rows, ok = [], True
    for dtype, values_a in a["results"].items():
        values_b = b["results"].get(dtype)
        if values_b is None or "skipped" in values_a or "skipped" in values_b:
            continue
        for key in sorted(set(values_a) | set(values_b)):
            va, vb = values_a.get(key), values_b.get(key)
            if va is None or vb is None:
                diff, tol, good = None, None, False
            else:
                diff, tol, good = _compare_values(va, vb, *tolerance(dtype, key))
            ok &= good
            rows.append({"dtype": dtype, "quantity": key, "A": va, "B": vb, "diff": diff,
                         "tol": tol, "ok": good})
    if not rows:
        raise AsterUserError("the two parity records share no dtype with results; record both "
                             "with the same --dtypes (for rl_step records: the same model.dtype)")
    return rows, ok


def _fmt(v) -> str:
    if isinstance(v, list):
        return f"{f'[{len(v)} values]':>16}"
    return f"{v:16.9g}" if isinstance(v, float) else f"{v!s:>16}"


def format_rows(rows: list[dict]) -> str:
    """The compare table, one quantity per line."""
    head = f"{'dtype':9} {'quantity':38} {'A':>16} {'B':>16} {'|A-B|':>10} {'tol':>10}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        diff = f"{r['diff']:10.2e}" if r["diff"] is not None else f"{'-':>10}"
        tol = f"{r['tol']:10.2e}" if r["tol"] is not None else f"{'-':>10}"
        lines.append(f"{r['dtype']:9} {r['quantity']:38} {_fmt(r['A'])} {_fmt(r['B'])} {diff} "
                     f"{tol}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
