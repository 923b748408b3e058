"""Loss assembly: model forward -> selected hidden states -> aster.kernels.token_logprobs ->
the configured objective (aster.algo.losses) plus the KL / entropy terms, normalised by the
mini batch's global counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aster import kernels


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
                return_entropy=False, position_ids=None):
        weight = self.model.get_output_embeddings().weight
        dtype = self.compute_dtype or weight.dtype
        autocast = torch.autocast(input_ids.device.type, dtype=dtype,
                                  enabled=weight.dtype != dtype)
        with autocast:
            out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state[rows, cols]
        return kernels.token_logprobs(hidden.to(dtype), weight.to(dtype), labels,
                                      temperature=temperature, return_entropy=return_entropy,
                                      impl=self.kernel_impl)


@dataclass
class MicroBatch:
    """Padded token ids plus the flat (row, col) positions whose next token is trained on."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [N]
    cols: torch.Tensor  # [N]  position whose hidden state predicts labels[i]
    labels: torch.Tensor  # [N]
    traj_of_token: torch.Tensor  # [N] index (within the micro batch) of each token's trajectory
    resp_index: torch.Tensor  # [N] index of each token within its response

    @property
    def num_tokens(self) -> int:
        return int(self.labels.numel())


def build_micro_batch(prompts: list, responses: list, loss_masks: list, pad_id: int = 0,
                      device=None) -> MicroBatch:
    """Right-padded ids of prompt+response rows and the loss-masked response positions."""
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, labels, owner, resp_idx = [], [], [], [], []
    for b, (seq, prompt, mask) in enumerate(zip(seqs, prompts, loss_masks)):
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[b, :len(seq)] = 1
        m = torch.as_tensor(mask, dtype=torch.bool)
        j = torch.nonzero(m).view(-1)
        rows.append(torch.full_like(j, b))
        cols.append(j + len(prompt) - 1)
        labels.append(ids[b, j + len(prompt)])
        owner.append(torch.full_like(j, b))
        resp_idx.append(j)
    cat = (lambda xs: torch.cat(xs).to(device)) if device is not None else torch.cat
    return MicroBatch(ids.to(device) if device is not None else ids,
                      attn.to(device) if device is not None else attn,
                      cat(rows), cat(cols), cat(labels), cat(owner), cat(resp_idx))


def gather_tokens(per_traj: list, mb: MicroBatch, indices: list[int]) -> torch.Tensor:
    """Flat [N] values of per-trajectory token tensors at the micro batch's trained positions."""
    vals = [torch.as_tensor(per_traj[i], dtype=torch.float32) for i in indices]
    width = max(v.numel() for v in vals)
    padded = torch.zeros((len(vals), width))
    for b, v in enumerate(vals):
        padded[b, :v.numel()] = v
    return padded[mb.traj_of_token.cpu(), mb.resp_index.cpu()].to(mb.labels.device)


def policy_logprobs(policy: nn.Module, mb: MicroBatch, temperature: float,
                    return_entropy: bool = False):
    """log p of the micro batch's trained tokens under `policy` (a PolicyForward)."""
    return policy(mb.input_ids, mb.attention_mask, mb.rows, mb.cols, mb.labels,
                  temperature=temperature, return_entropy=return_entropy)


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
