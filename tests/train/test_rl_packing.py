"""The GRPO step's forwards on packed token-budget micro batches (real transformers Qwen3, CPU).

- Packed rows (one row, position ids restarting per trajectory: the CPU backend's varlen sdpa,
  or transformers' block-diagonal mask under plain sdpa) and right-padded rows give the same
  old log-probs, losses, metrics and gradients, whatever the token budget splits the batch
  into: every normaliser is the mini batch's global count.
- rl.old_logp=auto skips the old-policy forward when a step makes exactly one update on its
  fresh rollouts, and the step's result (loss, metrics, gradients, weights, the old log-probs it
  reports) is the recomputing step's; with two updates it recomputes.
- The grpo objective's update runs aster.kernels.fused_policy_loss as the policy's head (loss
  and gradients in the log-prob sweep) and equals the objective's plain torch form.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aster.algo import build_micro_batch
from aster.backend import select_backend
from aster.config import load_config
from aster.metrics import MetricsWriter
from aster.rollout.agent import Trajectory

# 4 prompts x 2 samples, 2 mini batches (the second sees the first's update: ratios leave 1)
# (SGD at lr 20: the first update moves the policy far enough that the second one clips)
RL_LR = 20.0
GRAD_RTOL = 1e-5  # of the largest gradient element: fp32 summation order over ~1e3 terms
LOGP_ATOL = 2e-5  # per-token log-probs over a 151,936-way softmax, fp32 summation order
BASE = ["rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.group_size=2",
        "rl.ppo_epochs=1", f"rl.lr={RL_LR}", "rl.max_grad_norm=100", "rl.weight_decay=0",
        "rl.old_logp=recompute", "distributed.strategy=none", "logging.tensorboard=false"]
RESPONSES = [4, 61, 9, 30, 2, 45, 17, 80]  # long-tailed, as tool turns make them


def trajectories(vocab: int, seed: int = 0) -> list[Trajectory]:
    """8 trajectories of very uneven length with a masked tool-output span, mixed rewards;
    the engine's log-probs near the tiny random model's (~ -ln 1024), so truncated IS both
    caps and passes tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(RESPONSES):
        prompt = torch.randint(3, vocab, (5 + 3 * (i // 2),), generator=gen).tolist()
        mask = [0 if 1 <= j < 1 + n // 3 else 1 for j in range(n)]
        out.append(Trajectory(prompt_ids=prompt, loss_mask=mask, reward=float(i % 3 == 0),
                              response_ids=torch.randint(3, vocab, (n,), generator=gen).tolist(),
                              rollout_logprobs=(-6.7 - 0.4 * torch.rand(n, generator=gen)).tolist()))
    return out


def rl_context(model_dir, run_dir, *overrides):
    """An RL stage 1 (objective, Updater) from `model_dir`, stepping with
    plain SGD: the weights move linearly in the gradient (AdamW's near-sign first step would
    turn fp32 summation-order noise in near-zero gradient elements into lr-sized moves)."""
    from aster.train.pipeline import make_context
    from aster.train.rl import start_rl_stage

    cfg = load_config(None, [*BASE, *overrides])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    ctx = make_context(cfg, backend, str(model_dir), run_dir,
                       MetricsWriter(run_dir, tensorboard=False))
    optimizer = torch.optim.SGD(ctx.policy.parameters(), lr=cfg.rl.lr)
    return start_rl_stage(ctx, "rl", cfg.rl.stage1, 10, optimizer=optimizer, warmup_steps=0)


def run_step(ctx, trajs) -> dict:
    """learn_from_rollouts with every optimizer step's gradient recorded, and the number of
    model forwards it ran."""
    from aster.train.rl import learn_from_rollouts

    grads, forwards = [], []
    real_step = ctx.updater.step

    def step(loss, where, last_good):
        grads.append(torch.cat([p.grad.flatten() for p in ctx.hf_model.parameters()
                                if p.grad is not None]).clone())
        return real_step(loss, where, last_good)

    ctx.updater.step = step
    hook = ctx.hf_model.base_model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        learned = learn_from_rollouts(ctx, trajs, "test", None)
    finally:
        hook.remove()
    weights = {k: v.detach().clone() for k, v in ctx.hf_model.state_dict().items()}
    return {"metrics": learned["metrics"], "old_lp": learned["old_lp"], "grads": grads,
            "weights": weights, "forwards": len(forwards)}


def assert_same_step(got, want, what):
    for key in ("loss", "grad_norm", "approx_kl", "clip_frac_upper", "clip_frac_lower"):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-5, abs=1e-7), \
            f"{what} {key}"
    # a ratio is exp(logp - old_logp): its relative error is at most the two log-probs' errors
    # (the second mini batch's, at the policy the first update moved by lr 20)
    for key in ("ratio_mean", "ratio_max"):
        assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=2 * LOGP_ATOL), \
            f"{what} {key}"
    for a, b in zip(got["old_lp"], want["old_lp"]):
        torch.testing.assert_close(a, b, rtol=0, atol=LOGP_ATOL,
                                   msg=lambda m: f"{what} old_lp {m}")
    assert len(got["grads"]) == len(want["grads"]) == 2
    grad_tol = [GRAD_RTOL * b.abs().max().item() for b in want["grads"]]
    for a, b, tol in zip(got["grads"], want["grads"], grad_tol):  # to fp32 summation order
        assert (a - b).abs().max().item() <= tol, f"{what} grad"
    # Plain SGD: w_after = w - lr * (g1 + g2), so the weights can differ by at most lr times the
    # gradients' allowed difference, plus the rounding of the two subtractions. That is all the
    # comparison promises: a fixed atol (1e-5 before) held on one CPU and failed on an AVX2 one,
    # where one element of 131,072 moved 1.21e-5 at lr 20 from a last-bit gradient difference.
    lr = RL_LR
    weight_atol = lr * sum(grad_tol)
    for k in want["weights"]:
        w = want["weights"][k]
        rounding = 4 * torch.finfo(w.dtype).eps * w.abs().max().item()
        torch.testing.assert_close(got["weights"][k], w, rtol=0, atol=weight_atol + rounding,
                                   msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.fixture(scope="module")
def padded_one_per_micro(tiny_model_dir, tmp_path_factory):
    """The reference: right-padded rows, one trajectory per micro batch (budget 1)."""
    ctx = rl_context(tiny_model_dir, tmp_path_factory.mktemp("ref"), "rl.packing=false",
                     "rl.max_tokens_per_micro_batch=1")
    return run_step(ctx, trajectories(ctx.hf_model.config.vocab_size))


@pytest.mark.parametrize("packing,budget,attn", [
    (True, 1, "auto"), (True, 96, "auto"), (True, 100000, "auto"), (False, 100000, "auto"),
    (True, 100000, "sdpa")])  # sdpa: transformers' block-diagonal mask, not the CPU varlen
def test_packed_and_padded_give_the_same_step(tiny_model_dir, tmp_path, padded_one_per_micro,
                                              packing, budget, attn):
    ctx = rl_context(tiny_model_dir, tmp_path, f"rl.packing={str(packing).lower()}",
                     f"rl.max_tokens_per_micro_batch={budget}",
                     f"model.attn_implementation={attn}")
    got = run_step(ctx, trajectories(ctx.hf_model.config.vocab_size))
    want = padded_one_per_micro
    assert want["metrics"]["clip_frac_upper"] + want["metrics"]["clip_frac_lower"] > 0
    assert want["metrics"]["ratio_max"] > 1.0  # the second mini batch sees a moved policy
    assert_same_step(got, want, f"packing={packing} budget={budget}")
    # how the budget split the 2 mini batches: one trajectory each, or whole mini batches
    expected = {1: 8, 96: None, 100000: 2}[budget]
    if expected is not None:
        assert got["metrics"]["micro_batches"] == expected


def test_packed_rows_hold_no_padding(tiny_model_dir):
    """A packed micro batch computes exactly its trajectories' tokens, in one row whose
    position ids restart at each trajectory; the padded one computes width x rows."""
    trajs = trajectories(1000)
    args = ([t.prompt_ids for t in trajs], [t.response_ids for t in trajs],
            [t.loss_mask for t in trajs])
    packed, padded = build_micro_batch(*args, packed=True), build_micro_batch(*args)
    real = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
    assert packed.forward_tokens == real and packed.input_ids.shape[0] == 1
    assert packed.attention_mask is None
    assert int((packed.position_ids == 0).sum()) == len(trajs)
    assert padded.forward_tokens > 2 * real  # the long tail pads the short ones
    for name in ("labels", "traj_of_token", "resp_index"):  # the same tokens, in order
        assert torch.equal(getattr(packed, name), getattr(padded, name)), name
    empty = build_micro_batch([], [], [], packed=True)
    assert empty.forward_tokens == 1 and empty.num_tokens == 0


@pytest.fixture(scope="module")
def on_policy_runs(tiny_model_dir, tmp_path_factory):
    """One update per step (one mini batch, one epoch), truncated IS on: recompute vs auto."""
    runs = {}
    for mode in ("recompute", "auto"):
        ctx = rl_context(tiny_model_dir, tmp_path_factory.mktemp(mode), "rl.mini_batch_prompts=4",
                         f"rl.old_logp={mode}", "rl.tis_cap=1.1",
                         "rl.max_tokens_per_micro_batch=100")
        runs[mode] = run_step(ctx, trajectories(ctx.hf_model.config.vocab_size))
    return runs


def test_auto_skips_the_old_logp_forward_of_a_single_update(on_policy_runs):
    recompute, auto = on_policy_runs["recompute"], on_policy_runs["auto"]
    micro = recompute["metrics"]["micro_batches"]
    assert micro >= 2
    assert recompute["forwards"] == 2 * micro and auto["forwards"] == micro
    assert recompute["metrics"]["ratio_max"] == pytest.approx(1.0, abs=1e-6)  # on-policy
    assert auto["metrics"]["ratio_max"] == 1.0
    for key in ("loss", "grad_norm", "approx_kl", "ratio_mean", "clip_frac_upper",
                "clip_frac_lower"):
        assert auto["metrics"][key] == pytest.approx(recompute["metrics"][key], rel=1e-6,
                                                     abs=1e-8), key
    for a, b in zip(auto["old_lp"], recompute["old_lp"]):  # from the update's own forward
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(auto["grads"][0], recompute["grads"][0], rtol=1e-5, atol=1e-8)
    for k, v in recompute["weights"].items():
        torch.testing.assert_close(auto["weights"][k], v, rtol=0, atol=1e-7)
    # the entropy metric comes from the old-policy forward, which auto did not run
    assert recompute["metrics"]["entropy"] > 0 and auto["metrics"]["entropy"] is None


def test_auto_recomputes_when_a_step_makes_two_updates(tiny_model_dir, tmp_path):
    ctx = rl_context(tiny_model_dir, tmp_path, "rl.old_logp=auto",
                     "rl.max_tokens_per_micro_batch=100")
    got = run_step(ctx, trajectories(ctx.hf_model.config.vocab_size))
    assert got["forwards"] == 2 * got["metrics"]["micro_batches"]
    assert got["metrics"]["ratio_max"] > 1.0


def test_fused_head_equals_the_plain_form_through_policy_update(tiny_model_dir, tmp_path,
                                                                monkeypatch):
    """grpo's update on the fused kernel (log-probs, clipped loss with dual clip and TIS, and
    its gradients in one sweep) against rl.loss=grpo's plain torch form, two updates."""
    from aster import kernels

    calls = []
    real = kernels.fused_policy_loss

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "fused_policy_loss", counted)
    runs = {}
    for form in ("fused", "plain"):
        ctx = rl_context(tiny_model_dir, tmp_path / form, "rl.clip_c=3.0", "rl.tis_cap=1.1",
                         "rl.max_tokens_per_micro_batch=64")
        if form == "plain":
            ctx = dataclasses.replace(ctx, objective=dataclasses.replace(ctx.objective, fused=False))
        before = len(calls)
        runs[form] = run_step(ctx, trajectories(ctx.hf_model.config.vocab_size))
        runs[form]["fused_calls"] = len(calls) - before
    assert runs["fused"]["fused_calls"] == runs["fused"]["metrics"]["micro_batches"] > 0
    assert runs["plain"]["fused_calls"] == 0
    assert runs["plain"]["metrics"]["clip_frac_upper"] + \
        runs["plain"]["metrics"]["clip_frac_lower"] > 0
    assert_same_step(runs["fused"], runs["plain"], "fused vs plain")
