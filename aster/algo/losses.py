"""RL objectives as small loss objects, one registry keyed by `rl.loss`.

Each objective is a dataclass whose fields are the `rl:` config keys it reads (filled by name
in `from_config`). Called on one micro batch's flat trained tokens,

    loss, metrics = objective(logp, old_logp, adv, mask, seq_ids, num_tokens,
                              num_seqs=..., rollout_logp=...)

it returns a scalar whose sum over the micro batches and ranks of a mini batch is the mini
batch's loss, and detached 0-d metrics that add up the same way (keys ending in `_max` are
maxima). Every normaliser is *global*: `num_tokens` counts the unmasked tokens and `num_seqs`
the sequences with at least one of them, over the whole mini batch on all ranks, so the result
does not depend on how the batch is split. `seq_ids` [N] says which sequence of the micro batch
each token belongs to; a sequence-level objective needs all of a sequence's tokens in one micro
batch.

Plain torch is every objective's portable implementation; `grpo` (the default) dispatches to
the fused aster.kernels.clipped_policy_loss (chunked / Triton) unless `fused=False`, and its
`fused_head` runs aster.kernels.fused_policy_loss, which computes log-probs, loss and gradients
in one sweep over the logits (the update uses it when no KL / entropy term needs the log-probs
apart, on the implementations where it is measured faster: FUSED_HEAD_IMPLS); the tests hold
all three equal. The math follows verl's policy-loss registry
(verl/trainer/ppo/core_algos.py: vanilla with dual clip, gspo, cispo, agg_loss, kl_penalty).

A new objective is one dataclass with a `__call__` and one line in LOSSES.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from aster import kernels
from aster.kernels._loss_math import (
    clipped_token_loss,
    loss_metrics,
    ratio_terms,
    tis_weight,
)


def _dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 math, or fp64 for fp64 inputs (the parity suite)."""
    return torch.promote_types(t.dtype, torch.float32)


def _count(n, ref: torch.Tensor) -> torch.Tensor:
    """A global count as a 0-d tensor, at least 1 so an empty batch gives 0, not nan."""
    return torch.as_tensor(n, dtype=ref.dtype, device=ref.device).reshape(()).clamp(min=1.0)


def token_mean(per_token: torch.Tensor, mask: torch.Tensor, num_tokens) -> torch.Tensor:
    """Sum over unmasked tokens / the global token count."""
    kept = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    return kept.sum() / _count(num_tokens, per_token)


def seq_mean(per_token: torch.Tensor, mask: torch.Tensor, seq_ids: torch.Tensor,
             num_seqs) -> torch.Tensor:
    """Each sequence's token mean, summed over the micro batch's sequences / the global
    sequence count (verl's seq-mean-token-mean)."""
    sums, lengths = _per_seq(per_token, mask, seq_ids)
    return (sums / lengths.clamp(min=1.0)).sum() / _count(num_seqs, per_token)


def _per_seq(values: torch.Tensor, mask: torch.Tensor, seq_ids: torch.Tensor):
    """(sum of unmasked values, unmasked token count) per sequence id of the micro batch."""
    n_seq = int(seq_ids.max()) + 1 if seq_ids.numel() else 0
    valid = mask.bool()
    kept = torch.where(valid, values, torch.zeros_like(values))
    sums = values.new_zeros(n_seq).index_add(0, seq_ids, kept)
    lengths = values.new_zeros(n_seq).index_add(0, seq_ids, valid.to(values.dtype))
    return sums, lengths


def _from_fields(cls, rl, context: dict):
    """cls(**fields), each field read from the `rl:` section by its name or from `context`."""
    names = {f.name for f in fields(cls)}
    values = {n: getattr(rl, n) for n in names if hasattr(rl, n)}
    values.update({k: v for k, v in context.items() if k in names})
    return cls(**values)


@dataclass
class PolicyLoss:
    """What every objective reads: the trust region (`rl.clip_low` / `rl.clip_high`) and
    truncated importance sampling of the rollout engine's samples (`rl.tis_cap`; None: off)."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    tis_cap: float | None = None

    @classmethod
    def from_config(cls, rl, **context):
        """The objective with its fields taken from the `rl:` section by name, and from
        `context` (run facts such as kernel_impl, max_response_tokens) where it has them."""
        return _from_fields(cls, rl, context)

    def tis(self, old_logp: torch.Tensor, rollout_logp: torch.Tensor | None):
        """min(pi_old / pi_rollout, tis_cap) per token, or 1.0 without tis_cap."""
        if self.tis_cap is None:
            return 1.0
        if rollout_logp is None:
            raise ValueError("rl.tis_cap is set but no rollout log-probs were given")
        return tis_weight(old_logp, rollout_logp.to(old_logp.dtype), self.tis_cap)

    def __call__(self, logp, old_logp, adv, mask, seq_ids, num_tokens, *, num_seqs=None,
                 rollout_logp=None):
        raise NotImplementedError

    def fused_head(self, old_logp, adv, seq_ids, num_tokens, *, num_seqs=None,
                   rollout_logp=None, temperature=1.0):
        """A head for PolicyForward (head(hidden, weight, labels) -> (loss, metrics, detached
        logp)) that computes this objective over a micro batch's trained tokens in the log-prob
        sweep itself, or None (the default): the objective then runs on token_logprobs' output.
        `old_logp` None is on-policy (the sweep's own log-probs are the old ones)."""
        return None


# Implementations whose one-sweep fused_policy_loss beats token_logprobs + clipped_policy_loss.
# Measured on an H100 (device check run 1, 2026-11-28; N=16384, H=2560, V=151936, bf16, fwd +
# bwd): chunked 180 ms fused vs 216 ms unfused, but Triton 104 ms fused vs 94 ms unfused (its
# fused kernel accumulates grad_W across row blocks; the unfused one writes each vocab slice
# once). So under Triton the update keeps the two kernels apart.
FUSED_HEAD_IMPLS = ("reference", "chunked")


@dataclass
class GRPO(PolicyLoss):
    """ASTER's objective: PPO's clipped surrogate with clip-higher (eps_low 0.2, eps_high 0.28,
    DAPO), token-mean over the mini batch's tokens, optional dual clip (`rl.clip_c`) and TIS."""

    clip_c: float | None = None
    fused: bool = True  # the aster.kernels fast path; False: the plain torch below
    kernel_impl: str = "auto"  # which kernel implementation (the backend's)

    def __call__(self, logp, old_logp, adv, mask, seq_ids, num_tokens, *, num_seqs=None,
                 rollout_logp=None):
        if self.fused:
            return kernels.clipped_policy_loss(
                logp, old_logp, adv, mask, num_tokens=num_tokens, clip_low=self.clip_low,
                clip_high=self.clip_high, clip_c=self.clip_c,
                rollout_logp=rollout_logp if self.tis_cap is not None else None,
                tis_cap=self.tis_cap, impl=self.kernel_impl)
        dt = _dtype(logp)
        old, adv = old_logp.detach().to(dt), adv.detach().to(dt)
        log_ratio, ratio = ratio_terms(logp.to(dt), old)
        per_token = clipped_token_loss(ratio, adv, self.clip_low, self.clip_high, self.clip_c)
        loss = token_mean(per_token * self.tis(old, rollout_logp), mask, num_tokens)
        return loss, loss_metrics(ratio.detach(), log_ratio.detach(), adv, mask.bool(),
                                  _count(num_tokens, loss), self.clip_low, self.clip_high,
                                  self.clip_c)


    def fused_head(self, old_logp, adv, seq_ids, num_tokens, *, num_seqs=None,
                   rollout_logp=None, temperature=1.0):
        """aster.kernels.fused_policy_loss: log-probs, loss and its gradients w.r.t. hidden
        states and lm_head weight in one sweep (3 lm_head matmuls instead of 4)."""
        if not self.fused or kernels.resolve_impl(self.kernel_impl) not in FUSED_HEAD_IMPLS:
            return None

        def head(hidden, weight, labels):
            return kernels.fused_policy_loss(
                hidden, weight, labels, old_logp, adv, torch.ones_like(labels, dtype=torch.bool),
                num_tokens=num_tokens, clip_low=self.clip_low, clip_high=self.clip_high,
                clip_c=self.clip_c, temperature=temperature,
                rollout_logp=rollout_logp if self.tis_cap is not None else None,
                tis_cap=self.tis_cap, return_logp=True, impl=self.kernel_impl)

        return head


@dataclass
class DrGRPO(GRPO):
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): GRPO's per-token loss summed and divided
    by a constant, the sequence count times the stage's response budget
    (rl.stageN.max_response_tokens), instead of the token count: no bias towards long or
    short responses. verl: loss_agg_mode=seq-mean-token-sum-norm. (Its advantages drop the std
    normalisation: rl.adv_std_norm=false.)"""

    max_response_tokens: int = 16384

    def __call__(self, logp, old_logp, adv, mask, seq_ids, num_tokens, *, num_seqs=None,
                 rollout_logp=None):
        if num_seqs is None:
            raise ValueError("dr_grpo needs num_seqs, the mini batch's global sequence count")
        # the token mean times tokens / (seqs * budget): the same fused kernel, renormalised;
        # metrics stay per token
        loss, metrics = super().__call__(logp, old_logp, adv, mask, seq_ids, num_tokens,
                                         rollout_logp=rollout_logp)
        return loss * self._scale(num_tokens, num_seqs), metrics

    def _scale(self, num_tokens, num_seqs) -> float:
        return max(float(num_tokens), 1.0) / (max(float(num_seqs), 1.0)
                                              * self.max_response_tokens)

    def fused_head(self, old_logp, adv, seq_ids, num_tokens, *, num_seqs=None,
                   rollout_logp=None, temperature=1.0):
        head = super().fused_head(old_logp, adv, seq_ids, num_tokens, rollout_logp=rollout_logp,
                                  temperature=temperature)
        if head is None:
            return None
        if num_seqs is None:
            raise ValueError("dr_grpo needs num_seqs, the mini batch's global sequence count")
        scale = self._scale(num_tokens, num_seqs)

        def scaled(hidden, weight, labels):
            loss, metrics, logp = head(hidden, weight, labels)
            return loss * scale, metrics, logp

        return scaled


@dataclass
class GSPO(PolicyLoss):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): one importance ratio per sequence, the
    geometric mean of its token ratios, clipped as a whole; sequence mean of token means. The
    paper clips far tighter than GRPO (rl.clip_low=3e-4, rl.clip_high=4e-4). Clip metrics
    count sequences (fractions of num_seqs)."""

    def __call__(self, logp, old_logp, adv, mask, seq_ids, num_tokens, *, num_seqs=None,
                 rollout_logp=None):
        if num_seqs is None:
            raise ValueError("gspo needs num_seqs, the mini batch's global sequence count")
        dt = _dtype(logp)
        lp, old, adv = logp.to(dt), old_logp.detach().to(dt), adv.detach().to(dt)
        sums, lengths = _per_seq(lp.detach() - old, mask, seq_ids)
        seq_log_ratio = sums / lengths.clamp(min=1.0)
        # s_i,t = sg(s_i) * pi / sg(pi): the value is the sequence ratio, the gradient flows
        # through each token's log-prob (verl clamps the log at 10)
        log_s = torch.clamp(lp - lp.detach() + seq_log_ratio[seq_ids], max=10.0)
        s = torch.exp(log_s)
        per_token = clipped_token_loss(s, adv, self.clip_low, self.clip_high)
        loss = seq_mean(per_token * self.tis(old, rollout_logp), mask, seq_ids, num_seqs)
        return loss, self._metrics(seq_log_ratio, lp.detach() - old, adv, mask, seq_ids,
                                   num_tokens, num_seqs, loss)

    @torch.no_grad()
    def _metrics(self, seq_log_ratio, log_ratio, adv, mask, seq_ids, num_tokens, num_seqs,
                 like):
        seq_ratio = torch.exp(torch.clamp(seq_log_ratio, max=10.0))
        # a sequence's advantage: its tokens share one (GRPO broadcasts it), so the mean
        adv_sums, lengths = _per_seq(adv, mask, seq_ids)
        seq_adv = adv_sums / lengths.clamp(min=1.0)
        n_seqs = _count(num_seqs, like)
        ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
        return {
            "clip_frac_upper": ((seq_adv > 0) & (seq_ratio > 1 + self.clip_high)).sum() / n_seqs,
            "clip_frac_lower": ((seq_adv < 0) & (seq_ratio < 1 - self.clip_low)).sum() / n_seqs,
            "approx_kl": token_mean((ratio - 1.0) - log_ratio, mask, num_tokens),
            "ratio_mean": seq_ratio.sum() / n_seqs,
            "ratio_max": seq_ratio.max() if seq_ratio.numel() else seq_ratio.new_zeros(()),
        }


@dataclass
class CISPO(PolicyLoss):
    """CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped importance
    ratio, sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi, token-mean. Unlike PPO's
    clip it never drops a token's gradient; it only bounds its weight."""

    def __call__(self, logp, old_logp, adv, mask, seq_ids, num_tokens, *, num_seqs=None,
                 rollout_logp=None):
        dt = _dtype(logp)
        lp, old, adv = logp.to(dt), old_logp.detach().to(dt), adv.detach().to(dt)
        log_ratio, ratio = ratio_terms(lp.detach(), old)
        weight = torch.clamp(ratio, 1.0 - self.clip_low, 1.0 + self.clip_high)
        per_token = -weight * adv * lp * self.tis(old, rollout_logp)
        loss = token_mean(per_token, mask, num_tokens)
        valid, count = mask.bool(), _count(num_tokens, loss)
        with torch.no_grad():
            metrics = loss_metrics(ratio, log_ratio, adv, valid, count, self.clip_low,
                                   self.clip_high, None)
            metrics.pop("dual_clip_frac")
            # CISPO bounds the weight whatever the advantage's sign
            metrics["clip_frac_upper"] = torch.where(valid & (ratio > 1 + self.clip_high),
                                                     1.0, 0.0).to(dt).sum() / count
            metrics["clip_frac_lower"] = torch.where(valid & (ratio < 1 - self.clip_low),
                                                     1.0, 0.0).to(dt).sum() / count
        return loss, metrics


# rl.loss -> objective. A new objective: one class above, one line here.
LOSSES: dict[str, type[PolicyLoss]] = {
    "grpo": GRPO,
    "dr_grpo": DrGRPO,
    "gspo": GSPO,
    "cispo": CISPO,
}


def build_objective(rl, **context) -> PolicyLoss:
    """The objective `rl.loss` names, configured from the `rl:` section and `context`."""
    if rl.loss not in LOSSES:
        raise ValueError(f"rl.loss={rl.loss!r} must be one of {', '.join(LOSSES)}")
    return LOSSES[rl.loss].from_config(rl, **context)


# ---- the KL penalty to a frozen reference policy and the entropy bonus ----------------------
def _k1(logp, ref_logp):
    return logp - ref_logp


def _k2(logp, ref_logp):
    return 0.5 * (logp - ref_logp).square()


def _k3(logp, ref_logp):
    """Schulman's low-variance estimator r - log r - 1 with r = pi_ref / pi, clamped as verl's
    low_var_kl is (log r to +-20, the estimate to +-10)."""
    log_r = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(log_r) - log_r - 1.0, -10.0, 10.0)


# rl.kl_estimator -> per-token estimate of KL(pi || pi_ref) from samples of pi (verl's names,
# http://joschu.net/blog/kl-approx.html)
KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3, "low_var_kl": _k3}


@dataclass
class Penalties:
    """Terms added to any objective: kl_coef * KL(pi || pi_ref) (token mean, estimator
    `kl_estimator`) and - entropy_coef * entropy (token mean). Zero coefficients cost nothing:
    no reference policy is built and no entropy is computed."""

    kl_coef: float = 0.0
    kl_estimator: str = "low_var_kl"
    entropy_coef: float = 0.0

    @classmethod
    def from_config(cls, rl):
        return _from_fields(cls, rl, {})

    @property
    def active(self) -> bool:
        return bool(self.kl_coef or self.entropy_coef)

    def __call__(self, logp, mask, num_tokens, *, ref_logp=None, entropy=None):
        """(the term to add to the loss, its detached metrics kl_ref / entropy_bonus)."""
        term, metrics = logp.new_zeros((), dtype=_dtype(logp)), {}
        if self.kl_coef:
            if ref_logp is None:
                raise ValueError("rl.kl_coef > 0 needs the reference policy's log-probs")
            kl = token_mean(KL_ESTIMATORS[self.kl_estimator](logp.to(term.dtype),
                                                             ref_logp.to(term.dtype)),
                            mask, num_tokens)
            term, metrics["kl_ref"] = term + self.kl_coef * kl, kl.detach()
        if self.entropy_coef:
            if entropy is None:
                raise ValueError("rl.entropy_coef > 0 needs the policy's token entropy")
            ent = token_mean(entropy.to(term.dtype), mask, num_tokens)
            term, metrics["entropy_bonus"] = term - self.entropy_coef * ent, ent.detach()
        return term, metrics
