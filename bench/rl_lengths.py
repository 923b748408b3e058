"""The training section's RL update on a long-tailed length distribution: packed token-budget
micro batches against right-padded ones, in the same run, plus the rank balance of the paper's
batch split over 8 ranks (bench/bench_training.py calls `run`).

Lengths (prompt + response) are log-normal with median budget / 8 and sigma 1, clipped to
[256, budget] (the stage-1 budget, 16384 + a 2048-token prompt); on CPU everything is scaled
down 8x (32..2304 tokens) and the model is a small Qwen3 whose trunk/head FLOP split is
Qwen3-4B's (the padding only costs trunk work: the log-prob kernel sees trained positions only).

Three layouts of the same trajectories, each timed as one old-log-prob forward plus one update
(forward + backward through the grpo objective's fused head):
- `packed`: aster's; aster.algo.balance.plan_micro_batches under the token budget, packed rows;
- `padded, same plan`: the same micro batches right-padded (rl.packing=false);
- `padded, 4 per micro batch`: what aster did before issue 18 (rl.micro_batch_size=4 whole
  trajectories in arrival order, right-padded).
rl_packed_speedup is the last one's time over packed's. rl_real_token_fraction: real tokens /
tokens the packed forwards computed. rl_rank_imbalance_8: max / mean tokens per rank when the
paper's step (128 prompts x 8, full-scale lengths) is planned over 8 ranks with the qwen3-4b
budget; next to it the split by generating rank that aster used before.
"""

from __future__ import annotations

import math
import time

import torch

from aster.algo import PolicyForward, build_micro_batch, policy_logprobs
from aster.algo.balance import imbalance, plan_micro_batches
from aster.algo.losses import GRPO

PROMPT, BUDGET, PAPER_BATCH, PAPER_BUDGET = 2048, 16384 + 2048, 128 * 8, 65536


def lengths(n: int, low: int, high: int, seed: int = 0) -> list[int]:
    """n trajectory lengths, log-normal (median high / 8, sigma 1) clipped to [low, high]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    raw = torch.exp(math.log(high / 8) + z)
    return [int(v) for v in raw.clamp(low, high).round().tolist()]


def rank_balance() -> dict:
    """The paper's step over 8 ranks: planned vs split by generating rank (16 prompts each)."""
    lens = lengths(PAPER_BATCH, 256, BUDGET, seed=1)
    plan = plan_micro_batches(lens, 8, PAPER_BUDGET)
    per = PAPER_BATCH // 8
    naive = [sum(lens[r * per:(r + 1) * per]) for r in range(8)]
    return {"rl_rank_imbalance_8": imbalance(plan, lens),
            "rl_rank_imbalance_8_by_generating_rank": max(naive) / (sum(naive) / 8),
            "rl_micro_batches_per_rank_8": len(plan[0])}


def _model(backend):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if backend.device_type == "cpu":  # trunk ~2/3 of the linear FLOPs per token, as Qwen3-4B
        shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=32, intermediate_size=768, vocab_size=8192)
    else:  # Qwen3-4B's widths, 4 layers
        shape = dict(hidden_size=2560, num_hidden_layers=4, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=9728,
                     vocab_size=151936)
    torch.manual_seed(0)
    dtype = torch.float32 if backend.device_type == "cpu" else torch.bfloat16
    cfg = Qwen3Config(**shape, max_position_embeddings=32768, tie_word_embeddings=False,
                      attn_implementation=backend.attn_implementation(packed=True))
    return Qwen3ForCausalLM(cfg).to(backend.device(), dtype), shape


def _trajectories(lens: list[int], vocab: int, scale: int):
    gen = torch.Generator().manual_seed(2)
    prompt = max(16, PROMPT // scale)
    out = []
    for n in lens:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        p = min(prompt, n - 1)
        out.append((ids[:p], ids[p:], [1] * (n - p)))
    return out


def _pass(policy, objective, trajs, micro_batches, packed: bool, device) -> int:
    """One old-log-prob forward and one update over `micro_batches`; returns the tokens the
    forwards computed per pass."""
    computed, num_tokens = 0, sum(len(t[2]) for t in trajs)
    batches = [build_micro_batch([trajs[i][0] for i in mb], [trajs[i][1] for i in mb],
                                 [trajs[i][2] for i in mb], 0, device, packed=packed)
               for mb in micro_batches]
    old = []
    with torch.no_grad():
        for mb in batches:
            old.append(policy_logprobs(policy, mb, 1.0))
            computed += mb.forward_tokens
    for mb, lp in zip(batches, old):
        adv = torch.linspace(-1, 1, mb.num_tokens, device=device)
        objective_loss(policy, objective, mb, lp - 0.01, adv, num_tokens).backward()
    return computed


def objective_loss(policy, objective, mb, old, adv, num_tokens):
    """The objective's loss on one micro batch as the trainer computes it without penalties:
    through its fused head where it has one (3 lm_head matmuls), else on the log-probs
    (grpo under Triton: FUSED_HEAD_IMPLS says why)."""
    head = objective.fused_head(old, adv, mb.traj_of_token, num_tokens)
    if head is not None:
        return policy_logprobs(policy, mb, 1.0, head=head)[0]
    logp = policy_logprobs(policy, mb, 1.0)
    return objective(logp, old, adv, torch.ones_like(adv), mb.traj_of_token, num_tokens)[0]


def run(backend, quick: bool) -> dict:
    """Rows per layout, and the section figures (see the module docstring)."""
    cpu = backend.device_type == "cpu"
    scale = 8 if cpu else 1
    count = (16 if quick else 32) if cpu else (16 if quick else 32)
    budget = BUDGET // scale
    lens = lengths(count, 256 // scale, budget)
    model, shape = _model(backend)
    policy = PolicyForward(model, backend.kernel_impl)
    objective = GRPO(kernel_impl=backend.kernel_impl)
    trajs = _trajectories(lens, shape["vocab_size"], scale)
    layouts = {
        "packed": (plan_micro_batches(lens, 1, budget)[0], True),
        "padded, same plan": (plan_micro_batches(lens, 1, budget)[0], False),
        "padded, 4 per micro batch": ([list(range(i, min(i + 4, count)))
                                       for i in range(0, count, 4)], False),
    }
    rows, real = [], sum(lens)
    for label, (micro, packed) in layouts.items():
        _pass(policy, objective, trajs, micro, packed, backend.device())  # warm-up
        model.zero_grad(set_to_none=True)
        backend.synchronize()
        t0 = time.perf_counter()
        computed = _pass(policy, objective, trajs, micro, packed, backend.device())
        backend.synchronize()
        seconds = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        rows.append({"workload": f"rl update, {label}", "trajectories": count,
                     "real_tokens": real, "computed_tokens": computed,
                     "real_token_fraction": real / computed, "micro_batches": len(micro),
                     "old_logp_plus_update_s": seconds, "real_tokens_per_s": real / seconds})
    by = {r["workload"].split(", ", 1)[1]: r for r in rows}
    figures = {"rl_real_token_fraction": by["packed"]["real_token_fraction"],
               "rl_packed_speedup": by["padded, 4 per micro batch"]["old_logp_plus_update_s"]
               / by["packed"]["old_logp_plus_update_s"],
               "rl_packed_speedup_same_plan": by["padded, same plan"]["old_logp_plus_update_s"]
               / by["packed"]["old_logp_plus_update_s"],
               **rank_balance()}
    notes = [f"rl update: {count} trajectories, lengths log-normal in [{256 // scale}, "
             f"{budget}] (median {budget // 8}, sum {real}), budget {budget} tokens per micro "
             f"batch, model {shape}, attention {model.config._attn_implementation}",
             "rl_packed_speedup: 'padded, 4 per micro batch' (the pre-issue-18 layout) time / "
             "packed time; rl_packed_speedup_same_plan: the same micro batches right-padded",
             f"rl_rank_imbalance_8: max / mean tokens per rank, {PAPER_BATCH} trajectories "
             f"(lengths in [256, {BUDGET}]) planned over 8 ranks at {PAPER_BUDGET} tokens per "
             "micro batch; _by_generating_rank: the contiguous split aster used before"]
    return {"rows": rows, "figures": figures, "notes": notes}
