"""RL math: GRPO advantages, batching, the objectives (losses.py) and loss assembly."""

from aster.algo.grpo import (
    ADV_STDS,
    GroupAdvantages,
    global_token_count,
    group_advantages,
    local_token_count,
    mini_batches,
    shard_for_rank,
    split_indices,
    token_advantages,
)
from aster.algo.loss import (
    GlobalCounts,
    MicroBatch,
    PolicyForward,
    build_micro_batch,
    gather_tokens,
    micro_batch_loss,
    mini_batch_counts,
    policy_logprobs,
)
from aster.algo.losses import KL_ESTIMATORS, LOSSES, Penalties, PolicyLoss, build_objective

__all__ = ["ADV_STDS", "KL_ESTIMATORS", "LOSSES", "GlobalCounts", "GroupAdvantages", "MicroBatch",
           "Penalties", "PolicyForward", "PolicyLoss", "build_micro_batch", "build_objective",
           "gather_tokens", "global_token_count", "group_advantages", "local_token_count",
           "micro_batch_loss", "mini_batch_counts", "mini_batches", "policy_logprobs",
           "shard_for_rank", "split_indices", "token_advantages"]
