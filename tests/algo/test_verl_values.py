"""aster's GRPO against an external truth: values verl 0.5.0 computed on fixed inputs
(tests/algo/golden/verl_grpo.json, recorded by record_verl_grpo.py beside it, with its source).

The public ASTER reproduction trains with verl 0.5's GRPO; these are its advantages and its
token-mean clipped loss (clip-higher 0.2 / 0.28, dual clip on and off) with the gradient w.r.t.
the log-probs. aster's group advantages, its reference kernel (written from the formula), the
chunked kernel and the grpo objective's plain and fused forms must all give them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aster import kernels
from aster.algo import group_advantages
from aster.algo.losses import GRPO

GOLDEN = json.loads((Path(__file__).parent / "golden" / "verl_grpo.json").read_text())
MASK = torch.tensor(GOLDEN["mask"], dtype=torch.float64)
VALID = MASK.bool()
N = float(VALID.sum())
# verl's masked_mean divides by mask.sum() + 1e-8; aster by the token count: undo verl's eps
VERL_EPS_SCALE = (N + 1e-8) / N
# float64 implementations agree to rounding; chunked (and grpo's fused path, which runs the
# chunked kernel here) accumulates in float32 whatever its input dtype
RTOL = {"reference": 1e-12, "chunked": 1e-6}


def flat(name: str) -> torch.Tensor:
    return torch.tensor(GOLDEN[name], dtype=torch.float64)[VALID]


def flat_adv() -> torch.Tensor:
    return torch.tensor(GOLDEN["advantages"], dtype=torch.float64)[VALID]


def test_group_advantages_are_verls():
    rewards = torch.tensor(GOLDEN["rewards"], dtype=torch.float64)
    got = group_advantages(rewards, group_size=3).adv
    want = torch.tensor(GOLDEN["advantages"], dtype=torch.float64)[:, 0]  # verl: one per row
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)  # aster's is fp32


def _case(clip_c):
    return next(c for c in GOLDEN["cases"] if (c["clip_ratio_c"] < 1e6) == (clip_c is not None))


@pytest.mark.parametrize("clip_c", [3.0, None])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_kernel_loss_and_gradient_are_verls(impl, clip_c):
    case = _case(clip_c)
    logp = flat("log_prob").requires_grad_(True)
    old, adv = flat("old_log_prob"), flat_adv()
    mask = torch.ones_like(logp, dtype=torch.bool)
    loss, _ = kernels.clipped_policy_loss(logp, old, adv, mask, num_tokens=int(N),
                                          clip_low=0.2, clip_high=0.28, clip_c=clip_c,
                                          impl=impl)
    (grad,) = torch.autograd.grad(loss, [logp])
    assert loss.item() == pytest.approx(case["loss"] * VERL_EPS_SCALE, rel=RTOL[impl])
    want_grad = torch.tensor(case["grad"], dtype=torch.float64)[VALID] * VERL_EPS_SCALE
    torch.testing.assert_close(grad, want_grad, rtol=RTOL[impl], atol=RTOL[impl] * 1e-3)


@pytest.mark.parametrize("fused", [False, True])
def test_the_grpo_objective_is_verls(fused):
    """The trainer's objective (plain torch form and the fused kernel path's loss) with dual clip."""
    case = _case(3.0)
    objective = GRPO(clip_low=0.2, clip_high=0.28, clip_c=3.0, fused=fused)
    logp = flat("log_prob").requires_grad_(True)
    seq_ids = torch.arange(MASK.shape[0]).unsqueeze(1).expand_as(MASK)[VALID]
    mask = torch.ones_like(logp, dtype=torch.bool)
    loss, _ = objective(logp, flat("old_log_prob"), flat_adv(), mask, seq_ids, N,
                        num_seqs=float(MASK.shape[0]))
    (grad,) = torch.autograd.grad(loss, [logp])
    rtol = RTOL["chunked" if fused else "reference"]
    assert loss.item() == pytest.approx(case["loss"] * VERL_EPS_SCALE, rel=rtol)
    want_grad = torch.tensor(case["grad"], dtype=torch.float64)[VALID] * VERL_EPS_SCALE
    torch.testing.assert_close(grad, want_grad, rtol=rtol, atol=rtol * 1e-3)
