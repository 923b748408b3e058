"""clipped_policy_loss: every implementation against the float64 reference, split invariance of
the token mean, masking, dual clip and truncated importance sampling."""

from __future__ import annotations

import pytest
import torch

from aster.kernels import clipped_policy_loss
from tests.kernels._inputs import on_device

IMPLS = ("chunked", "triton")
TOL = dict(atol=1e-6, rtol=1e-5)  # fp32 elementwise math and a sum over <= 1e3 tokens


def make_batch(b=6, t=41, seed=0, spread=0.4):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=gen) * 3
    old = logp + spread * torch.randn(b, t, generator=gen)
    adv = torch.randn(b, t, generator=gen)
    mask = torch.rand(b, t, generator=gen) > 0.25
    rollout = old + 0.3 * torch.randn(b, t, generator=gen)
    return logp, old, adv, mask, rollout


def loss_and_grad(impl, logp, old, adv, mask, upstream=1.0, **kw):
    """(loss, grad, metrics) on CPU in float64; the kernel gets its inputs on the test device."""
    logp, old, adv, mask = on_device(logp, old, adv, mask)
    kw = {k: (on_device(v)[0] if torch.is_tensor(v) else v) for k, v in kw.items()}
    lp = logp.detach().clone().requires_grad_(True)
    loss, metrics = clipped_policy_loss(lp, old, adv, mask, impl=impl, **kw)
    (grad,) = torch.autograd.grad(loss * upstream, [lp])
    return (loss.detach().double().cpu(), grad.double().cpu(),
            {k: v.double().cpu() for k, v in metrics.items()})


OPTIONS = [
    {},
    {"clip_c": 3.0},
    {"rollout_logp": "rollout", "tis_cap": 2.0},
    {"clip_low": 0.1, "clip_high": 0.5, "clip_c": 2.0, "rollout_logp": "rollout", "tis_cap": 1.5},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("opts", range(len(OPTIONS)))
def test_matches_reference(impl, opts):
    logp, old, adv, mask, rollout = make_batch(seed=opts, spread=0.8)
    kw = {k: (rollout if v == "rollout" else v) for k, v in OPTIONS[opts].items()}
    n = int(mask.sum())
    want = loss_and_grad("reference", logp.double(), old.double(), adv.double(), mask,
                         upstream=1.7, num_tokens=n,
                         **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()})
    got = loss_and_grad(impl, logp, old, adv, mask, upstream=1.7, num_tokens=n, **kw)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    assert got[2].keys() == want[2].keys()
    for key in want[2]:
        torch.testing.assert_close(got[2][key], want[2][key], **TOL, msg=key)
    assert want[2]["clip_frac_upper"] > 0 and want[2]["clip_frac_lower"] > 0
    if "clip_c" in kw:
        assert want[2]["dual_clip_frac"] > 0


@pytest.mark.parametrize("impl", ("reference", *IMPLS))
def test_token_mean_is_split_invariant(impl):
    logp, old, adv, mask, _ = make_batch(b=8, t=30, seed=3)
    num_tokens = int(mask.sum())  # the global count, shared by every micro batch
    full_loss, full_grad, full_m = loss_and_grad(impl, logp, old, adv, mask,
                                                 num_tokens=num_tokens)
    # Micro batches of uneven sizes (as different ranks would see them).
    parts = [(0, 1), (1, 4), (4, 8)]
    losses, grads, kls = [], [], []
    for a, b in parts:
        loss, grad, m = loss_and_grad(impl, logp[a:b], old[a:b], adv[a:b], mask[a:b],
                                      num_tokens=num_tokens)
        losses.append(loss)
        grads.append(grad)
        kls.append(m["approx_kl"])
    torch.testing.assert_close(sum(losses), full_loss, **TOL)
    torch.testing.assert_close(torch.cat(grads), full_grad, **TOL)
    torch.testing.assert_close(sum(kls), full_m["approx_kl"], **TOL)
    # Normalising per micro batch would be a different number: the test can tell them apart.
    per_micro = sum(loss_and_grad(impl, logp[a:b], old[a:b], adv[a:b], mask[a:b],
                                  num_tokens=int(mask[a:b].sum()))[0] for a, b in parts) / 3
    assert not torch.isclose(per_micro, full_loss, rtol=1e-3)


@pytest.mark.parametrize("impl", ("reference", *IMPLS))
def test_fully_masked_rows_contribute_nothing(impl):
    logp, old, adv, mask, _ = make_batch(seed=4)
    mask[2] = False
    garbage = logp.clone()
    garbage[2] = 1e4  # log-ratio clamped to 20; masked anyway
    n = int(mask.sum())
    loss_a, grad_a, _ = loss_and_grad(impl, logp, old, adv, mask, num_tokens=n)
    loss_b, grad_b, _ = loss_and_grad(impl, garbage, old, adv, mask, num_tokens=n)
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    assert torch.equal(grad_b[2], torch.zeros_like(grad_b[2]))
    # Everything masked, num_tokens 0: a zero loss and zero gradient, not nan.
    loss, grad, metrics = loss_and_grad(impl, logp, old, adv, torch.zeros_like(mask),
                                        num_tokens=0)
    assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("impl", ("reference", *IMPLS))
def test_single_token_and_extreme_ratios(impl):
    one = loss_and_grad(impl, torch.tensor([-1.0]), torch.tensor([-1.1]), torch.tensor([2.0]),
                        torch.tensor([True]), num_tokens=1)
    ratio = torch.exp(torch.tensor(0.1, dtype=torch.float64))
    torch.testing.assert_close(one[0], -2.0 * ratio, **TOL)
    torch.testing.assert_close(one[1], (-2.0 * ratio).reshape(1), **TOL)
    # A log-ratio of 50 is clamped to 20: finite loss, and no gradient through the clamp.
    big = loss_and_grad(impl, torch.tensor([10.0, 0.0]), torch.tensor([-40.0, 0.0]),
                        torch.tensor([-1.0, 1.0]), torch.tensor([True, True]), num_tokens=2)
    assert torch.isfinite(big[0]) and big[1][0] == 0
    torch.testing.assert_close(big[2]["ratio_max"], torch.exp(torch.tensor(20.0)).double(),
                               rtol=1e-5, atol=0)


def test_bf16_logp_gets_bf16_grad():
    logp, old, adv, mask, _ = on_device(*make_batch(seed=5))
    for impl in IMPLS:
        lp = logp.to(torch.bfloat16).requires_grad_(True)
        loss, _ = clipped_policy_loss(lp, old, adv, mask, num_tokens=int(mask.sum()), impl=impl)
        loss.backward()
        assert loss.dtype == torch.float32 and lp.grad.dtype == torch.bfloat16


def test_argument_errors():
    logp, old, adv, mask, rollout = make_batch()
    with pytest.raises(ValueError, match="clip_c"):
        clipped_policy_loss(logp, old, adv, mask, num_tokens=1, clip_c=1.1, impl="chunked")
    with pytest.raises(ValueError, match="tis_cap"):
        clipped_policy_loss(logp, old, adv, mask, num_tokens=1, rollout_logp=rollout,
                            impl="chunked")
    with pytest.raises(ValueError, match="old_logp"):
        clipped_policy_loss(logp, old[:2], adv, mask, num_tokens=1, impl="reference")
    with pytest.raises(ValueError, match="unknown kernel impl"):
        clipped_policy_loss(logp, old, adv, mask, num_tokens=1, impl="fused")
