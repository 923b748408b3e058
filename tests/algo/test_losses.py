"""The RL objectives (aster.algo.losses): each against a direct computation of its formula,
split invariance under global normalisers, grpo's fused kernels equal to its plain torch form,
the KL / entropy terms (value and gradient against full logits), and the registry."""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from aster import kernels
from aster.algo import (
    KL_ESTIMATORS,
    LOSSES,
    GlobalCounts,
    Penalties,
    build_objective,
    micro_batch_loss,
    mini_batch_counts,
)
from aster.algo.losses import CISPO, GRPO, GSPO, DrGRPO

TOL = dict(atol=1e-6, rtol=1e-5)
LENGTHS = [7, 1, 12, 5, 9, 3]  # tokens per sequence, uneven on purpose


def flat_batch(seed=0, spread=0.5, lengths=LENGTHS):
    """Flat tokens of len(lengths) sequences: logp, old, adv (one per sequence), mask, seq_ids,
    rollout log-probs."""
    gen = torch.Generator().manual_seed(seed)
    seq_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    n = seq_ids.numel()
    logp = -torch.rand(n, generator=gen) * 3
    old = logp + spread * torch.randn(n, generator=gen)
    adv = torch.randn(len(lengths), generator=gen)[seq_ids]
    mask = torch.rand(n, generator=gen) > 0.2
    mask[0] = True
    rollout = old + 0.3 * torch.randn(n, generator=gen)
    return logp, old, adv, mask, seq_ids, rollout


def counts_of(mask, seq_ids):
    seqs = {int(s) for s, m in zip(seq_ids, mask) if m}
    return float(mask.sum()), float(len(seqs))


def run(objective, logp, old, adv, mask, seq_ids, num_tokens, num_seqs, rollout=None,
        upstream=1.0):
    lp = logp.detach().clone().double().requires_grad_(True)
    loss, metrics = objective(lp, old.double(), adv.double(), mask, seq_ids, num_tokens,
                              num_seqs=num_seqs,
                              rollout_logp=None if rollout is None else rollout.double())
    (grad,) = torch.autograd.grad(loss * upstream, [lp])
    return loss.detach(), grad, {k: v.double() for k, v in metrics.items()}


OBJECTIVES = {
    "grpo": GRPO(fused=False),
    "grpo_fused": GRPO(kernel_impl="reference"),
    "grpo_dual_tis": GRPO(fused=False, clip_c=3.0, tis_cap=2.0),
    "dr_grpo": DrGRPO(kernel_impl="chunked", max_response_tokens=16),
    "gspo": GSPO(clip_low=0.05, clip_high=0.08),
    "gspo_tis": GSPO(clip_low=0.05, clip_high=0.08, tis_cap=1.5),
    "cispo": CISPO(),
}


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_is_split_invariant(name):
    """Micro batches of whole sequences, normalised by the mini batch's global counts, sum to
    the full batch's loss, gradient and metrics (as ranks and micro batches must)."""
    objective = OBJECTIVES[name]
    logp, old, adv, mask, seq_ids, rollout = flat_batch(seed=1)
    n_tok, n_seq = counts_of(mask, seq_ids)
    full = run(objective, logp, old, adv, mask, seq_ids, n_tok, n_seq, rollout)
    losses, grads, metrics = [], [], []
    for first, last in [(0, 1), (1, 4), (4, 6)]:
        sel = (seq_ids >= first) & (seq_ids < last)
        part = run(objective, logp[sel], old[sel], adv[sel], mask[sel], seq_ids[sel] - first,
                   n_tok, n_seq, rollout[sel])
        losses.append(part[0])
        grads.append(part[1])
        metrics.append(part[2])
    torch.testing.assert_close(sum(losses), full[0], **TOL)
    torch.testing.assert_close(torch.cat(grads), full[1], **TOL)
    for key, value in full[2].items():
        parts = torch.stack([m[key] for m in metrics])
        got = parts.max() if key.endswith("_max") else parts.sum()
        torch.testing.assert_close(got, value, **TOL, msg=key)
    # a per-micro-batch normaliser would give another number: the test tells them apart
    local = sum(run(objective, logp[sel], old[sel], adv[sel], mask[sel], seq_ids[sel] - a,
                    *counts_of(mask[sel], seq_ids[sel] - a), rollout[sel])[0]
                for a, b in [(0, 1), (1, 4), (4, 6)]
                for sel in [(seq_ids >= a) & (seq_ids < b)])
    assert not torch.isclose(local, full[0], rtol=1e-3)


def _targets():
    """(impl, device) pairs; the Triton interpreter on CPU, Triton on a GPU where there is one."""
    has_triton = importlib.util.find_spec("triton") is not None
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return [("reference", "cpu"), ("chunked", "cpu"),
            pytest.param("triton", "cpu", marks=pytest.mark.skipif(
                not (has_triton and interp), reason="needs triton and TRITON_INTERPRET=1")),
            pytest.param("triton", "cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("impl,device", _targets())
@pytest.mark.parametrize("opts", [{}, {"clip_c": 3.0}, {"tis_cap": 2.0},
                                  {"clip_low": 0.1, "clip_high": 0.5, "clip_c": 2.0,
                                   "tis_cap": 1.5}])
def test_grpo_fused_kernels_equal_the_plain_torch_form(impl, device, opts):
    logp, old, adv, mask, seq_ids, rollout = (t.to(device) for t in flat_batch(seed=2,
                                                                               spread=0.8))
    n_tok, n_seq = counts_of(mask.cpu(), seq_ids.cpu())
    plain = GRPO(fused=False, **opts)
    fused = GRPO(kernel_impl=impl, **opts)
    lp = logp.detach().clone().requires_grad_(True)
    want = plain(lp, old, adv, mask, seq_ids, n_tok, rollout_logp=rollout)
    (g_want,) = torch.autograd.grad(want[0] * 1.7, [lp])
    got = fused(lp, old, adv, mask, seq_ids, n_tok, rollout_logp=rollout)
    (g_got,) = torch.autograd.grad(got[0] * 1.7, [lp])
    torch.testing.assert_close(got[0].float(), want[0].float(), **TOL)
    torch.testing.assert_close(g_got.float(), g_want.float(), **TOL)
    assert got[1].keys() == want[1].keys()
    for key in want[1]:
        torch.testing.assert_close(got[1][key].float(), want[1][key].float(), **TOL, msg=key)
    assert want[1]["clip_frac_upper"] > 0 and want[1]["clip_frac_lower"] > 0


def test_dr_grpo_divides_by_a_constant_not_the_token_count():
    logp, old, adv, mask, seq_ids, _ = flat_batch(seed=3)
    n_tok, n_seq = counts_of(mask, seq_ids)
    budget = 32
    loss, grad, _ = run(DrGRPO(fused=False, max_response_tokens=budget), logp, old, adv, mask,
                        seq_ids, n_tok, n_seq)
    lp = logp.double().requires_grad_(True)
    ratio = torch.exp(lp - old.double())
    a = adv.double()
    per_token = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.28))
    direct = (per_token * mask).sum() / (n_seq * budget)
    (g_direct,) = torch.autograd.grad(direct, [lp])
    torch.testing.assert_close(loss, direct.detach(), **TOL)
    torch.testing.assert_close(grad, g_direct, **TOL)
    # the same tokens in a batch with more tokens elsewhere: grpo's per-token weight shrinks,
    # dr_grpo's does not
    g_grpo = run(GRPO(fused=False), logp, old, adv, mask, seq_ids, n_tok, n_seq)[1]
    g_grpo2 = run(GRPO(fused=False), logp, old, adv, mask, seq_ids, 2 * n_tok, n_seq)[1]
    g_dr2 = run(DrGRPO(fused=False, max_response_tokens=budget), logp, old, adv, mask, seq_ids,
                2 * n_tok, n_seq)[1]
    torch.testing.assert_close(g_grpo2, g_grpo / 2, **TOL)
    torch.testing.assert_close(g_dr2, grad, **TOL)


def test_gspo_uses_one_clipped_ratio_per_sequence():
    logp, old, adv, mask, seq_ids, _ = flat_batch(seed=4, spread=0.05)
    n_tok, n_seq = counts_of(mask, seq_ids)
    clip_low, clip_high = 0.01, 0.015
    loss, grad, metrics = run(GSPO(clip_low=clip_low, clip_high=clip_high), logp, old, adv,
                              mask, seq_ids, n_tok, n_seq)
    # direct: s_i = exp(mean over seq i of (logp - old)), differentiable as a whole; every
    # token of the sequence shares s_i and A_i, so each sequence's token mean is its own term
    lp = logp.double().requires_grad_(True)
    terms, clipped = [], 0
    for i in range(len(LENGTHS)):
        m = (seq_ids == i) & mask
        if not m.any():
            continue
        s = torch.exp((lp[m] - old.double()[m]).mean())
        a = adv.double()[m][0]
        terms.append(torch.maximum(-a * s, -a * s.clamp(1 - clip_low, 1 + clip_high)))
        clipped += int((a > 0 and s > 1 + clip_high) or (a < 0 and s < 1 - clip_low))
    direct = torch.stack(terms).sum() / n_seq
    (g_direct,) = torch.autograd.grad(direct, [lp])
    torch.testing.assert_close(loss, direct.detach(), **TOL)
    torch.testing.assert_close(grad, g_direct, **TOL)
    assert 0 < clipped < len(terms)  # both clipped and live sequences in the batch
    frac = metrics["clip_frac_upper"] + metrics["clip_frac_lower"]
    torch.testing.assert_close(frac, torch.tensor(clipped / n_seq, dtype=torch.float64))


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    logp, old, adv, mask, seq_ids, _ = flat_batch(seed=5, spread=0.8)
    n_tok, n_seq = counts_of(mask, seq_ids)
    loss, grad, metrics = run(CISPO(), logp, old, adv, mask, seq_ids, n_tok, n_seq)
    ratio = torch.exp(logp.double() - old.double())
    weight = ratio.clamp(0.8, 1.28)
    direct_grad = torch.where(mask, -weight * adv.double() / n_tok, 0.0)
    torch.testing.assert_close(grad, direct_grad, **TOL)
    torch.testing.assert_close(
        loss, (torch.where(mask, -weight * adv.double() * logp.double(), 0.0)).sum() / n_tok,
        **TOL)
    clipped = mask & ((ratio > 1.28) | (ratio < 0.8))
    assert clipped.any() and (grad[clipped] != 0).all()  # PPO's clip would zero these
    ppo_grad = run(GRPO(fused=False), logp, old, adv, mask, seq_ids, n_tok, n_seq)[1]
    assert (ppo_grad[clipped & (((adv > 0) & (ratio > 1.28)) | ((adv < 0) & (ratio < 0.8)))]
            == 0).all()


def test_registry_builds_each_objective_from_config_keys():
    rl = SimpleNamespace(loss="grpo", clip_low=0.1, clip_high=0.3, clip_c=4.0, tis_cap=2.0,
                         group_size=8)
    grpo = build_objective(rl, kernel_impl="chunked", max_response_tokens=99)
    assert grpo == GRPO(clip_low=0.1, clip_high=0.3, clip_c=4.0, tis_cap=2.0,
                        kernel_impl="chunked")
    rl.loss = "dr_grpo"
    assert build_objective(rl, max_response_tokens=99).max_response_tokens == 99
    rl.loss = "gspo"
    assert build_objective(rl) == GSPO(clip_low=0.1, clip_high=0.3, tis_cap=2.0)
    assert set(LOSSES) == {"grpo", "dr_grpo", "gspo", "cispo"}
    rl.loss = "ppo"
    with pytest.raises(ValueError, match="rl.loss='ppo' must be one of grpo"):
        build_objective(rl)


def test_tis_needs_rollout_logprobs():
    logp, old, adv, mask, seq_ids, _ = flat_batch()
    for objective in (GRPO(fused=False, tis_cap=2.0), GSPO(tis_cap=2.0), CISPO(tis_cap=2.0)):
        with pytest.raises(ValueError, match="rollout log-probs"):
            objective(logp, old, adv, mask, seq_ids, 10.0, num_seqs=3.0)


def test_mini_batch_counts_are_global():
    masks = [[1, 1, 0], [0, 0], [1], [0, 1, 1, 1]]
    assert mini_batch_counts(masks, [0, 1, 2]) == GlobalCounts(tokens=3.0, seqs=2.0)
    doubled = mini_batch_counts(masks, [0, 1, 2], lambda t: t.mul_(2))  # two equal ranks
    assert doubled == GlobalCounts(tokens=6.0, seqs=4.0)


# ---- KL penalty and entropy bonus ------------------------------------------------------------
def _direct_kl(est, lp, ref):
    d = lp - ref
    return {"k1": d, "k2": 0.5 * d**2, "k3": torch.exp(-d) + d - 1.0,
            "low_var_kl": torch.exp(-d) + d - 1.0}[est]


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("estimator", sorted(KL_ESTIMATORS))
def test_kl_and_entropy_terms_match_full_logits(estimator, impl):
    """Value and gradient (w.r.t. hidden states and lm_head) of kl_coef * KL - entropy_coef *
    H through the kernels' log-probs and entropy, against the full softmax in float64."""
    gen = torch.Generator().manual_seed(7)
    n, h, v = 29, 16, 53
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * 0.3
    ref_weight = weight + 0.1 * torch.randn(v, h, generator=gen)
    labels = torch.randint(0, v, (n,), generator=gen)
    mask = torch.rand(n, generator=gen) > 0.3
    num_tokens = float(mask.sum()) + 4  # other micro batches' tokens count too
    penalties = Penalties(kl_coef=0.3, kl_estimator=estimator, entropy_coef=0.05)

    hid, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logp, ent = kernels.token_logprobs(hid, w, labels, return_entropy=True, impl=impl)
    ref = kernels.token_logprobs(hidden, ref_weight, labels, impl=impl)
    term, metrics = penalties(logp, mask, num_tokens, ref_logp=ref, entropy=ent)
    g_hid, g_w = torch.autograd.grad(term, [hid, w])

    hid64, w64 = hidden.double().requires_grad_(True), weight.double().requires_grad_(True)
    all_lp = torch.log_softmax(hid64 @ w64.T, -1)
    lp = all_lp.gather(1, labels[:, None]).squeeze(1)
    ref64 = torch.log_softmax(hidden.double() @ ref_weight.double().T, -1).gather(
        1, labels[:, None]).squeeze(1)
    entropy = -(all_lp.exp() * all_lp).sum(-1)
    kl = (_direct_kl(estimator, lp, ref64) * mask).sum() / num_tokens
    h_mean = (entropy * mask).sum() / num_tokens
    direct = 0.3 * kl - 0.05 * h_mean
    d_hid, d_w = torch.autograd.grad(direct, [hid64, w64])
    torch.testing.assert_close(term.double(), direct.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["kl_ref"].double(), kl.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["entropy_bonus"].double(), h_mean.detach(), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(g_hid.double(), d_hid, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_w.double(), d_w, atol=1e-5, rtol=1e-4)


def test_zero_coefficients_add_nothing():
    logp, old, adv, mask, seq_ids, _ = flat_batch()
    counts = GlobalCounts(*counts_of(mask, seq_ids))
    objective = GRPO(fused=False)
    alone = objective(logp, old, adv, mask, seq_ids, counts.tokens, num_seqs=counts.seqs)
    # no entropy and no reference log-probs are passed: zero coefficients must not need them
    loss, metrics = micro_batch_loss(objective, logp[mask], old[mask], adv[mask],
                                     seq_ids[mask], counts, penalties=Penalties())
    assert not Penalties().active
    torch.testing.assert_close(loss, alone[0], **TOL)
    assert metrics.keys() == alone[1].keys()
    with pytest.raises(ValueError, match="reference policy"):
        Penalties(kl_coef=0.1)(logp, mask, 10.0)
    with pytest.raises(ValueError, match="entropy"):
        Penalties(entropy_coef=0.1)(logp, mask, 10.0)


@pytest.mark.parametrize("impl,fused", [("chunked", True), ("reference", True),
                                        ("triton", False)])
def test_grpo_fused_head_only_where_it_is_measured_faster(impl, fused):
    """Under Triton the one-sweep fused GRPO head is slower than Triton's token_logprobs plus
    the clipped loss (H100, device check run 1): the update must keep them apart there."""
    adv = torch.zeros(4)
    for cls in (GRPO, DrGRPO):
        head = cls(kernel_impl=impl).fused_head(None, adv, torch.zeros(4, dtype=torch.long), 4,
                                               num_seqs=1)
        assert (head is not None) == fused, (cls.__name__, impl)
    assert GRPO(kernel_impl=impl, fused=False).fused_head(None, adv, None, 4) is None
