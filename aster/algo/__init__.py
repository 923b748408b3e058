"""RL math: GRPO advantages, batching and loss assembly (calls aster.kernels)."""

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
    MicroBatch,
    PolicyForward,
    build_micro_batch,
    gather_tokens,
    micro_batch_loss,
    policy_logprobs,
)

__all__ = ["ADV_STDS", "GroupAdvantages", "MicroBatch", "PolicyForward", "build_micro_batch",
           "gather_tokens", "global_token_count", "group_advantages", "local_token_count",
           "micro_batch_loss", "mini_batches", "policy_logprobs", "shard_for_rank",
           "split_indices", "token_advantages"]
