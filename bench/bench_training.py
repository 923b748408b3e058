"""Training section of bench/throughput.py: one GRPO update and one SFT step, tokens/s, MFU,
peak memory, aster's fused log-prob path next to a plain transformers forward; then an RL
update on long-tailed lengths, packed vs padded, and the 8-rank balance (bench/rl_lengths.py:
the section's rl_real_token_fraction, rl_packed_speedup, rl_rank_imbalance_8).

The baseline computes log-probs the usual way (full [B, T, V] logits, log_softmax, gather);
aster's path runs the trunk, then aster.kernels.token_logprobs on the trained positions only.
Both take the same clipped token-mean loss and an AdamW step on the same batch.

    python bench/bench_training.py --device cpu [--quick]
"""

from __future__ import annotations

import argparse
import time

import rl_lengths  # bench/ is on sys.path when throughput.py loads a section
import torch

from aster import kernels
from aster.algo.loss import PolicyForward, build_micro_batch, policy_logprobs
from aster.algo.losses import GRPO


def _model(backend, quick: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if backend.device_type == "cpu":  # the tiny model: CPU sections measure the machinery
        shape = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, intermediate_size=256,
                     vocab_size=151936 if not quick else 32768)
    else:  # Qwen3-4B's widths with fewer layers, so one device holds it with its optimizer
        shape = dict(hidden_size=2560, num_hidden_layers=4 if quick else 8,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     intermediate_size=9728, vocab_size=151936)
    torch.manual_seed(0)
    dtype = torch.float32 if backend.device_type == "cpu" else torch.bfloat16
    cfg = Qwen3Config(**shape, max_position_embeddings=8192, tie_word_embeddings=False,
                      attn_implementation="sdpa")
    return Qwen3ForCausalLM(cfg).to(backend.device(), dtype), shape


def _batch(vocab: int, batch: int, prompt: int, response: int, device):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (prompt,), generator=gen).tolist() for _ in range(batch)]
    responses = [torch.randint(0, vocab, (response,), generator=gen).tolist() for _ in range(batch)]
    masks = [[1] * response for _ in range(batch)]
    return build_micro_batch(prompts, responses, masks, device=device)


def _baseline_logp(model, mb):
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.float()
    logp_all = torch.log_softmax(logits, dim=-1)
    return logp_all[mb.rows, mb.cols].gather(-1, mb.labels[:, None]).squeeze(-1)


def _logp(model, mb, use_aster: bool):
    return policy_logprobs(PolicyForward(model), mb, 1.0) if use_aster \
        else _baseline_logp(model, mb)


def _sft_update(model, mb, use_aster: bool, _old=None) -> None:
    logp = _logp(model, mb, use_aster)
    (-logp.sum() / logp.numel()).backward()


def _grpo_update(model, mb, use_aster: bool, old) -> None:
    adv = torch.linspace(-1, 1, mb.num_tokens, device=mb.labels.device)
    if use_aster:  # the trainer's update: grpo's fused head where it is the faster path
        loss = rl_lengths.objective_loss(PolicyForward(model), GRPO(), mb, old - 0.01, adv,
                                         mb.num_tokens)
    else:
        logp = _baseline_logp(model, mb)
        loss, _ = kernels.clipped_policy_loss(logp, old - 0.01, adv, torch.ones_like(logp),
                                              num_tokens=logp.numel())
    loss.backward()


def _measure(backend, phases: dict, repeats: int) -> tuple[dict[str, float], float]:
    """Mean seconds per phase (phases run in order, synchronised apart) over `repeats` runs
    after one warm-up run (allocator, kernels' first launch); and the peak memory."""
    for fn in phases.values():
        fn()
    peak_before = backend.memory_stats().get("mem_peak_gib", 0.0)
    totals = dict.fromkeys(phases, 0.0)
    for _ in range(repeats):
        for name, fn in phases.items():
            backend.synchronize()
            t0 = time.perf_counter()
            fn()
            backend.synchronize()
            totals[name] += time.perf_counter() - t0
    mem = backend.memory_stats().get("mem_peak_gib", peak_before)
    return {name: total / repeats for name, total in totals.items()}, mem


def run(backend, quick: bool) -> dict:
    """GRPO update (aster vs baseline) and SFT step timings; MFU where the peak is known."""
    model, shape = _model(backend, quick)
    batch, prompt, response = (4, 64, 192) if quick else (8, 128, 384)
    if backend.device_type != "cpu":
        batch, prompt, response = (2, 512, 3584) if quick else (4, 512, 7680)
    mb = _batch(shape["vocab_size"], batch, prompt, response, backend.device())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    tokens = batch * (prompt + response)
    peak = backend.peak_flops(next(model.parameters()).dtype)
    rows = []
    for label, update, use_aster in (("grpo update, aster kernels", _grpo_update, True),
                                     ("grpo update, baseline (full logits)", _grpo_update, False),
                                     ("sft step, aster kernels", _sft_update, True),
                                     ("sft step, baseline (full logits)", _sft_update, False)):
        old = {}

        def old_logp(use_aster=use_aster, old=old):
            with torch.no_grad():
                old["logp"] = _logp(model, mb, use_aster)

        def step(update=update, use_aster=use_aster, old=old):
            opt.zero_grad(set_to_none=True)
            update(model, mb, use_aster, old.get("logp"))
            opt.step()

        grpo = update is _grpo_update
        phases = {"old_logp": old_logp, "update": step} if grpo else {"update": step}
        times, mem = _measure(backend, phases, 1 if quick else 3)
        seconds = sum(times.values())
        # fwd + bwd of every weight (6) plus the old log-probs forward (2) for GRPO
        flops = (8 if grpo else 6) * n_params * tokens
        rows.append({"workload": label, "tokens": tokens, "step_s": seconds,
                     "old_logp_s": times.get("old_logp"), "update_s": times["update"],
                     "tokens_per_s": tokens / seconds,
                     "mfu": flops / seconds / peak if peak else None, "peak_mem_gib": mem})
    for aster_row, base_row in ((rows[0], rows[1]), (rows[2], rows[3])):
        aster_row["speedup_vs_baseline"] = base_row["step_s"] / aster_row["step_s"]
    lengths = rl_lengths.run(backend, quick)  # packed vs padded on long-tailed lengths
    notes = [f"model {shape}; batch {batch} x ({prompt} prompt + {response} response) tokens",
             "sft step: token-mean NLL of the response tokens; grpo: old log-probs (no-grad "
             "forward) then the clipped token-mean loss update, timed apart; aster's update "
             "is the grpo objective as the trainer runs it (its fused head, "
             "aster.kernels.fused_policy_loss, on the chunked kernels; under Triton "
             "token_logprobs then the loss), the "
             "baseline's the clipped loss on full-logits log-probs",
             "rollout, tools and weight sync of a GRPO step: see the e2e section",
             "MFU: (6 + 2 for GRPO's old log-probs) * params * tokens / time / backend peak "
             "(n/a where the peak is unknown)",
             "peak memory on CPU is the process's max RSS (monotone; rows after the first "
             "can only show the high-water mark)", *lengths["notes"]]
    return {"section": "training", "rows": rows + lengths["rows"], **lengths["figures"],
            "notes": notes}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from aster.backend import select_backend

    result = run(select_backend(args.device), args.quick)
    for row in result["rows"]:
        print(row)
    for key, value in result.items():
        if key.startswith("rl_"):
            print(f"{key}: {value:.4g}")
