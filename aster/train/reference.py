"""The frozen reference policy of the KL penalty (`rl.kl_coef > 0`).

It holds the stage's starting weights (the model the stage was loaded from, also after a resume:
the penalty anchors the stage, not the last checkpoint), is sharded the way the policy is, never
receives gradients and never reaches the rollout engine (push_weights sends ctx.hf_model only).
With rl.kl_coef = 0 nothing here runs.
"""

from __future__ import annotations

import logging

from aster.errors import AsterUserError

log = logging.getLogger("aster")


def check_reference_policy(cfg) -> None:
    """One-line error, before anything loads, for a KL penalty the strategy cannot shard."""
    dist = cfg.distributed
    if cfg.rl.kl_coef and dist.strategy == "deepspeed" and dist.zero_stage == 3:
        raise AsterUserError(f"rl.kl_coef={cfg.rl.kl_coef} needs a reference policy, which aster "
                             "shards with fsdp2 but not with DeepSpeed ZeRO-3; use "
                             "distributed.strategy=fsdp2, or distributed.zero_stage=1 or 2 "
                             "(full parameters on every rank, as the policy has)")


def build_reference_policy(ctx):
    """A frozen PolicyForward over a fresh copy of the stage's starting weights
    (ctx.model_dir), wrapped like the policy: FSDP2 shards it; ddp, none and ZeRO-1/2 keep full
    parameters on every rank, so it stays a plain module (DDP refuses a module without
    trainable parameters, and has nothing to synchronise for one)."""
    from aster.algo import PolicyForward
    from aster.train.common import load_policy
    from aster.train.parallel import apply_parallelism, resolve_strategy

    check_reference_policy(ctx.cfg)
    model, _ = load_policy(ctx.model_dir, ctx.cfg.model, ctx.backend)
    model.requires_grad_(False)
    # frozen: no fp32 master is needed, so it is held in the policy's compute dtype (half the
    # memory in bf16) and its log-probs are computed exactly as the policy's are
    model.to(ctx.compute_dtype).eval()
    policy = PolicyForward(model, ctx.backend.kernel_impl, ctx.compute_dtype)
    strategy = resolve_strategy(ctx.cfg.distributed.strategy, ctx.dist.world_size)
    if strategy == "fsdp2" and ctx.dist.world_size > 1:
        policy, _ = apply_parallelism(policy, ctx.backend, ctx.cfg.distributed,
                                      ctx.compute_dtype)
    log.info("rl.kl_coef=%s: reference policy loaded from %s (%s)", ctx.cfg.rl.kl_coef,
             ctx.model_dir, strategy)
    return policy.eval()
