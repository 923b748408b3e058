"""Loss assembly: model forward -> selected hidden states -> aster.kernels.token_logprobs ->
the configured objective (aster.algo.losses) plus the KL / entropy terms, normalised by the
mini batch's global counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aster import kernels
from aster.algo.packing import build_rows


class PolicyForward(nn.Module):
    """Wraps a causal LM so one forward returns log p(label) of selected positions.

    The lm_head matmul runs inside this module's forward, so sharding wrappers (FSDP2) have
    the head's weight gathered when the kernel reads it; [N, V] logits are never built.

    `compute_dtype` (None: the parameters' own) is the mixed-precision compute dtype: where the
    parameters are wider (fp32 masters under none / ddp) the body runs under torch.autocast;
    FSDP2's MixedPrecisionPolicy and DeepSpeed's bf16 mode already hand the forward parameters
    in it. Either way the kernel gets hidden states and lm_head weight in `compute_dtype` and
    returns fp32 log-probs.
    """

    def __init__(self, model: nn.Module, kernel_impl: str = "auto",
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.kernel_impl = kernel_impl
        self.compute_dtype = compute_dtype

    def forward(self, input_ids, attention_mask, rows, cols, labels, *, temperature=1.0,
                return_entropy=False, position_ids=None, head=None):
        """log p(labels) at (rows, cols) (and the entropy there with `return_entropy`); with
        `head`, head(hidden [N, H], lm_head weight [V, H], labels) instead: a loss that reads
        the hidden states itself (the fused GRPO loss), run here so that the head's weight is
        the gathered one under sharding wrappers."""
        weight = self.model.get_output_embeddings().weight
        dtype = self.compute_dtype or weight.dtype
        autocast = torch.autocast(input_ids.device.type, dtype=dtype,
                                  enabled=weight.dtype != dtype)
        with autocast:
            out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state[rows, cols].to(dtype)
        if head is not None:
            return head(hidden, weight.to(dtype), labels)
        return kernels.token_logprobs(hidden, weight.to(dtype), labels,
                                      temperature=temperature, return_entropy=return_entropy,
                                      impl=self.kernel_impl)


@dataclass
class MicroBatch:
    """A forward's token rows (packed or padded, aster.algo.packing) plus the flat trained
    response positions, with each one's trajectory and index within its response."""

    input_ids: torch.Tensor  # [B, T]; packed: [1, T]
    attention_mask: torch.Tensor | None  # [B, T]; None when packed
    rows: torch.Tensor  # [N]
    cols: torch.Tensor  # [N]  position whose hidden state predicts labels[i]
    labels: torch.Tensor  # [N]
    traj_of_token: torch.Tensor  # [N] index (within the micro batch) of each token's trajectory
    resp_index: torch.Tensor  # [N] index of each token within its response
    position_ids: torch.Tensor | None = None  # [1, T] restarting per trajectory when packed

    @property
    def num_tokens(self) -> int:
        return int(self.labels.numel())

    @property
    def forward_tokens(self) -> int:
        """Token positions the forward computes (padding included)."""
        return int(self.input_ids.numel())


def build_micro_batch(prompts: list, responses: list, loss_masks: list, pad_id: int = 0,
                      device=None, *, packed: bool = False) -> MicroBatch:
    """prompt+response rows, right-padded or packed (aster.algo.packing), and the loss-masked
    response positions. No trajectories: one pad token and nothing trained (an empty micro
    batch that still joins the collectives)."""
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    masks = [[0] * len(p) + [int(m) for m in mask] for p, mask in zip(prompts, loss_masks)]
    rows = build_rows(seqs, masks, packed=packed, pad_id=pad_id)
    if device is not None:
        rows = rows.to(device)
    starts = torch.tensor([len(p) for p in prompts], dtype=torch.long,
                          device=rows.seq.device)
    resp_index = rows.token_index - starts[rows.seq] if len(prompts) else rows.token_index
    return MicroBatch(rows.input_ids, rows.attention_mask, rows.rows, rows.cols, rows.labels,
                      rows.seq, resp_index, rows.position_ids)


def gather_tokens(per_traj: list, mb: MicroBatch, indices: list[int]) -> torch.Tensor:
    """Flat [N] values of per-trajectory token tensors at the micro batch's trained positions."""
    if not indices:
        return torch.zeros(0, device=mb.labels.device)
    vals = [torch.as_tensor(per_traj[i], dtype=torch.float32) for i in indices]
    width = max(v.numel() for v in vals)
    padded = torch.zeros((len(vals), width))
    for b, v in enumerate(vals):
        padded[b, :v.numel()] = v
    return padded[mb.traj_of_token.cpu(), mb.resp_index.cpu()].to(mb.labels.device)


def policy_logprobs(policy: nn.Module, mb: MicroBatch, temperature: float,
                    return_entropy: bool = False, head=None):
    """log p of the micro batch's trained tokens under `policy` (a PolicyForward); with `head`
    whatever head(hidden, weight, labels) returns (see PolicyForward)."""
    return policy(mb.input_ids, mb.attention_mask, mb.rows, mb.cols, mb.labels,
                  temperature=temperature, return_entropy=return_entropy,
                  position_ids=mb.position_ids, head=head)


@dataclass
class GlobalCounts:
    """A mini batch's normalisers, over all its micro batches and ranks: trained tokens, and
    sequences with at least one trained token."""

    tokens: float
    seqs: float


def mini_batch_counts(loss_masks: list, indices: list[int], all_reduce_sum=None) -> GlobalCounts:
    """GlobalCounts of trajectories `indices` (this rank's share), summed over ranks by
    `all_reduce_sum` (in place; None: one process) in one collective."""
    per_traj = [int(torch.as_tensor(loss_masks[i]).sum()) for i in indices]
    t = torch.tensor([float(sum(per_traj)), float(sum(n > 0 for n in per_traj))],
                     dtype=torch.float64)
    if all_reduce_sum is not None:
        t = all_reduce_sum(t)
    return GlobalCounts(tokens=t[0].item(), seqs=t[1].item())


def micro_batch_loss(objective, logp, old_logp, adv, seq_ids, counts: GlobalCounts, *,
                     penalties=None, rollout_logp=None, ref_logp=None, entropy=None):
    """`objective` (an aster.algo.losses.PolicyLoss) over one micro batch's flat trained tokens,
    plus `penalties` (KL to the reference policy, entropy bonus) when active. Everything is
    normalised by the mini batch's *global* counts, so the sum over micro batches and ranks is
    the mini batch's loss. Returns (loss, detached metrics; pg_loss is the objective's part
    when a penalty is added)."""
    mask = torch.ones_like(logp, dtype=torch.bool)
    loss, metrics = objective(logp, old_logp, adv, mask, seq_ids, counts.tokens,
                              num_seqs=counts.seqs, rollout_logp=rollout_logp)
    metrics = dict(metrics)
    if penalties is not None and penalties.active:
        term, extra = penalties(logp, mask, counts.tokens, ref_logp=ref_logp, entropy=entropy)
        metrics["pg_loss"] = loss.detach()
        loss = loss + term
        metrics.update(extra)
    return loss, metrics
