"""GRPO math as small pure functions: group-normalised advantages, token broadcasting and
mini/micro batch splitting with the *global* token count of a mini batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupAdvantages:
    """Per-trajectory advantages and how many groups carried no signal."""

    adv: torch.Tensor  # [num_prompts * group_size] fp32
    num_groups: int
    num_zero_groups: int  # groups whose rewards were all equal (zero advantage)


ADV_STDS = ("sample", "population")


def group_advantages(rewards, group_size: int, *, std_norm: bool = True, eps: float = 1e-6,
                     std: str = "sample") -> GroupAdvantages:
    """(r - mean) / (std + eps) within each consecutive group of `group_size` rewards
    (r - mean when std_norm is false). Groups with all-equal rewards get exactly zero (so does
    every group of one).

    `std`: "sample" divides by the Bessel-corrected std (n - 1), as verl's
    compute_grpo_outcome_advantage (torch.std) and TRL's GRPOTrainer (Tensor.std) do;
    "population" by the n-normalised one (sqrt((G-1)/G) smaller, so advantages are
    sqrt(G/(G-1)) larger: 1.069x at G=8)."""
    if std not in ADV_STDS:
        raise ValueError(f"std={std!r} must be one of {', '.join(ADV_STDS)}")
    r = torch.as_tensor(rewards, dtype=torch.float32).reshape(-1)
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    groups = r.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    centred = groups - mean
    if std_norm:
        # a group of one has no sample std (0/0 is nan); it is flat and zeroed below anyway,
        # so it takes the n-normalised std (0) and the division stays finite
        correction = 1 if std == "sample" and group_size > 1 else 0
        sd = groups.std(dim=1, keepdim=True, correction=correction)
        centred = centred / (sd + eps)
    flat = (groups == groups[:, :1]).all(dim=1)
    centred = torch.where(flat[:, None], torch.zeros_like(centred), centred)
    return GroupAdvantages(adv=centred.reshape(-1), num_groups=groups.shape[0],
                           num_zero_groups=int(flat.sum()))


def token_advantages(adv: torch.Tensor, loss_masks: list) -> list[torch.Tensor]:
    """Broadcast each trajectory's advantage over its response tokens (0 where masked)."""
    out = []
    for a, mask in zip(adv.tolist(), loss_masks):
        m = torch.as_tensor(mask, dtype=torch.float32)
        out.append(m * a)
    return out


def split_indices(n: int, size: int) -> list[list[int]]:
    """Consecutive chunks of range(n) of at most `size` items."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1; got {size}")
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def shard_for_rank(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous share of `indices` (shares differ in size by at most one)."""
    n = len(indices)
    start = rank * n // world_size
    end = (rank + 1) * n // world_size
    return indices[start:end]


def mini_batches(num_trajs: int, group_size: int, mini_batch_prompts: int) -> list[list[int]]:
    """Trajectory indices of each mini batch: whole groups, `mini_batch_prompts` at a time."""
    if num_trajs % group_size:
        raise ValueError(f"{num_trajs} trajectories are not whole groups of {group_size}")
    return split_indices(num_trajs, mini_batch_prompts * group_size)


def local_token_count(loss_masks: list, indices: list[int]) -> int:
    """Unmasked response tokens of the given trajectories."""
    return int(sum(int(torch.as_tensor(loss_masks[i]).sum()) for i in indices))


def global_token_count(local_count: int, all_reduce_sum=None) -> int:
    """The mini batch's token count over all ranks (all micro batches). `all_reduce_sum`
    sums a tensor across ranks in place (None: single process)."""
    t = torch.tensor([float(local_count)], dtype=torch.float64)
    if all_reduce_sum is not None:
        all_reduce_sum(t)
    return int(round(t.item()))
