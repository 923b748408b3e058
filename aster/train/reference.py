"""The frozen reference policy of the KL penalty (`rl.kl_coef > 0`).

It holds the stage's starting weights (the model the stage was loaded from, also after a resume:
the penalty anchors the stage, not the last checkpoint), is sharded the way the policy is, never
receives gradients and never reaches the rollout engine (push_weights sends ctx.hf_model only).
With rl.kl_coef = 0 nothing here runs.
"""

from __future__ import annotations

import logging

from aster.algo import PolicyForward
from aster.train.common import load_policy
from aster.train.strategy import strategy_class

log = logging.getLogger("aster")


def check_reference_policy(cfg) -> None:
    """One-line error, before anything loads, for a KL penalty the strategy cannot shard."""
    strategy_class(cfg.distributed.strategy).check_config(cfg)


def build_reference_policy(ctx):
    """A frozen PolicyForward over a fresh copy of the stage's starting weights
    (ctx.model_dir), wrapped like the policy: FSDP2 shards it; ddp, none and ZeRO-1/2 keep full
    parameters on every rank, so it stays a plain module (DDP refuses a module without
    trainable parameters, and has nothing to synchronise for one)."""
    check_reference_policy(ctx.cfg)
    model, _ = load_policy(ctx.model_dir, ctx.cfg.model, ctx.backend)
    model.requires_grad_(False)
    # frozen: no fp32 master is needed, so it is held in the policy's compute dtype (half the
    # memory in bf16) and its log-probs are computed exactly as the policy's are
    model.to(ctx.compute_dtype).eval()
    policy = PolicyForward(model, ctx.backend.kernel_impl, ctx.compute_dtype)
    policy = ctx.strategy.wrap_reference(policy)
    log.info("rl.kl_coef=%s: reference policy loaded from %s (%s)", ctx.cfg.rl.kl_coef,
             ctx.model_dir, ctx.strategy.name)
    return policy.eval()
