"""Record float64 reference outputs of aster.kernels for fixed seeded inputs.

    python tests/parity/record_kernel_goldens.py   # writes tests/parity/golden/kernels.json

Inputs are regenerated from their seeds by tests/parity/test_kernel_goldens.py (an input
checksum catches RNG drift). Small outputs are stored whole; gradients as checksums: sum, sum of
|x| and a projection onto a fixed seeded direction (which catches sign and placement errors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "golden" / "kernels.json"

# (name, N, H, V, temperature, dtype, seed); odd shapes on purpose, including Qwen3's vocab.
LOGPROB_CASES = [
    ("n1_tiny_vocab", 1, 16, 7, 1.0, "float32", 11),
    ("odd_shapes_t07", 37, 24, 1001, 0.7, "float32", 12),
    ("divisible_t16", 64, 64, 4096, 1.6, "float32", 13),
    ("qwen_vocab", 5, 32, 151936, 1.0, "float32", 14),
    ("odd_shapes_bf16", 33, 48, 2053, 1.0, "bfloat16", 15),
]
# (name, B, T, clip_c, tis_cap, seed)
LOSS_CASES = [
    ("plain", 4, 33, None, None, 21),
    ("dual_clip_tis", 7, 19, 3.0, 2.0, 22),
    ("single_token", 1, 1, None, None, 23),
]


def logprob_inputs(n, h, v, dtype, seed):
    """Seeded hidden [n, h], weight [v, h] in `dtype`, labels, upstream grads for logp/entropy."""
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen) * 2.0).to(getattr(torch, dtype))
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(getattr(torch, dtype))
    labels = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, labels, torch.randn(n, generator=gen), torch.randn(n, generator=gen)


def loss_inputs(b, t, seed):
    """Seeded logp, old_logp, advantages, mask, rollout_logp, all [b, t]."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=gen) * 3
    old = logp + 0.6 * torch.randn(b, t, generator=gen)
    adv = torch.randn(b, t, generator=gen)
    mask = torch.rand(b, t, generator=gen) > 0.2
    mask.view(-1)[0] = True
    return logp, old, adv, mask, old + 0.3 * torch.randn(b, t, generator=gen)


def checksum(t: torch.Tensor, seed: int = 0) -> list[float]:
    """[sum, sum |x|, <x, fixed direction>] in float64."""
    t = t.detach().double().reshape(-1).cpu()  # results of every device, one CPU direction
    direction = torch.randn(t.numel(), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
    return [t.sum().item(), t.abs().sum().item(), (t * direction).sum().item()]


def logprob_outputs(fn, hidden, weight, labels, g_logp, g_ent, temperature):
    """Outputs of one implementation in the golden layout (float64 python numbers)."""
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    logp, ent = fn(h, w, labels, temperature=temperature, return_entropy=True)
    total = (logp * g_logp.to(logp.dtype)).sum() + (ent * g_ent.to(ent.dtype)).sum()
    gh, gw = torch.autograd.grad(total, [h, w])
    return {"logp": logp.detach().double().tolist(), "entropy": ent.detach().double().tolist(),
            "grad_hidden": checksum(gh, 1), "grad_weight": checksum(gw, 2)}


def loss_outputs(fn, logp, old, adv, mask, rollout, clip_c, tis_cap):
    """Loss, gradient checksum and metrics of one implementation (upstream grad 1.3)."""
    lp = logp.detach().clone().requires_grad_(True)
    kw = {"rollout_logp": rollout, "tis_cap": tis_cap} if tis_cap is not None else {}
    loss, metrics = fn(lp, old, adv, mask, num_tokens=int(mask.sum()), clip_c=clip_c, **kw)
    (grad,) = torch.autograd.grad(loss * 1.3, [lp])
    return {"loss": loss.item(), "grad": checksum(grad, 3),
            "metrics": {k: v.item() for k, v in metrics.items()}}


def record() -> dict:
    """Every case through the float64 reference."""
    from aster.kernels import reference

    out = {"torch": torch.__version__, "token_logprobs": {}, "clipped_policy_loss": {}}
    for name, n, h, v, temp, dtype, seed in LOGPROB_CASES:
        hidden, weight, labels, g_lp, g_ent = logprob_inputs(n, h, v, dtype, seed)
        res = logprob_outputs(reference.token_logprobs, hidden.double(), weight.double(),
                              labels, g_lp.double(), g_ent.double(), temp)
        res["input_checksum"] = checksum(hidden)[:2] + checksum(weight)[:2]
        out["token_logprobs"][name] = res
    for name, b, t, clip_c, tis_cap, seed in LOSS_CASES:
        logp, old, adv, mask, rollout = loss_inputs(b, t, seed)
        out["clipped_policy_loss"][name] = loss_outputs(
            reference.clipped_policy_loss, logp.double(), old.double(), adv.double(), mask,
            rollout.double(), clip_c, tis_cap)
    return out


def main() -> int:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    tmp = GOLDEN.with_suffix(".tmp")
    tmp.write_text(json.dumps(record(), indent=1) + "\n")
    tmp.replace(GOLDEN)  # never leave a half-written golden file
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
