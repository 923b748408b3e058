"""Cold-start SFT: multi-turn tool conversations encoded as the model generates them
(aster.train.sft_encoding), loss on assistant tokens only (reasoning, calls, answers); prompts
and tool outputs masked; samples over the cutoff dropped and counted, never truncated."""

from __future__ import annotations

import logging
import math
import time

import torch

from aster.algo.packing import build_rows, use_packing
from aster.train.checkpoint import save_checkpoint
from aster.train.common import build_optimizer, build_scheduler
from aster.train.sft_encoding import (  # noqa: F401 (the trainer's public encoding API)
    Encoded,
    encode_conversation,
    encode_dataset,
    encode_segments,
)
from aster.train.stage import TrainStage, open_stage

log = logging.getLogger("aster")


def collate_padded(batch: list[Encoded], pad_id: int, device) -> dict:
    """Right-padded rows with an attention mask; trained positions as flat (row, col, label)."""
    return _as_dict(build_rows([e.ids for e in batch], [e.mask for e in batch], packed=False,
                               pad_id=pad_id).to(device))


def collate_packed(batch: list[Encoded], device) -> dict:
    """All sequences in one row with position ids restarting per sequence (packed attention
    backends split on the position-id resets); no padding, no dense mask."""
    return _as_dict(build_rows([e.ids for e in batch], [e.mask for e in batch],
                               packed=True).to(device))


def _as_dict(rows) -> dict:
    return {"input_ids": rows.input_ids, "attention_mask": rows.attention_mask,
            "position_ids": rows.position_ids, "rows": rows.rows, "cols": rows.cols,
            "labels": rows.labels}


def count_trained(batch: list[Encoded]) -> int:
    return sum(sum(e.mask[1:]) for e in batch)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _step_batch(data: list[Encoded], step: int, cfg, seed: int, rank: int, world: int):
    """This rank's sequences of global step `step` (the data position is the step itself).
    Every step holds exactly sft.global_batch_size sequences: the last step of an epoch wraps
    around to the epoch's first ones, so every rank gets the same share (global_batch_size /
    world, checked at start-up by aster.train.world) and runs the same micro batches."""
    per_epoch = math.ceil(len(data) / cfg.global_batch_size)
    epoch, idx = divmod(step, per_epoch)
    order = _epoch_order(len(data), seed, epoch)
    gbs = cfg.global_batch_size
    chosen = [order[(idx * gbs + i) % len(order)] for i in range(gbs)]
    mine = chosen[rank * gbs // world:(rank + 1) * gbs // world]
    return epoch, [data[i] for i in mine]


def sft_micro_loss(policy, batch: dict, num_tokens: float):
    """Token-mean negative log-likelihood of the assistant tokens, normalised by the global
    token count of the step (so the sum over micro batches and ranks is the mean)."""
    logp = policy(batch["input_ids"], batch["attention_mask"], batch["rows"], batch["cols"],
                  batch["labels"], position_ids=batch["position_ids"])
    return -logp.sum() / num_tokens


def _collate(chunk, packed: bool, pad_id: int, device) -> dict:
    return collate_packed(chunk, device) if packed else collate_padded(chunk, pad_id, device)


def sft_total_steps(sft_cfg, num_examples: int) -> int:
    """The SFT stage's optimizer steps: sft.epochs over `num_examples` in global batches."""
    return math.ceil(num_examples / sft_cfg.global_batch_size) * sft_cfg.epochs


def start_sft_stage(ctx, total_steps: int) -> TrainStage:
    """The SFT stage over `ctx`, from sft.*: AdamW, the warmup and schedule over
    `total_steps`, the Updater and the resume (aster.train.stage.open_stage)."""
    cfg = ctx.cfg.sft
    optimizer = build_optimizer(ctx.policy, cfg.lr, cfg.weight_decay, cfg.adam_betas)
    scheduler = build_scheduler(optimizer, total_steps, int(cfg.warmup_ratio * total_steps),
                                cfg.lr_schedule, decay_steps=round(cfg.decay_ratio * total_steps))
    return open_stage(ctx, "sft", cfg, optimizer, scheduler)


def run_sft(ctx, data: list[Encoded], num_dropped: int = 0) -> dict:
    """Set up the SFT stage (resuming from its last checkpoint) and train it on encoded
    conversations. Returns the last step's metrics."""
    stage = start_sft_stage(ctx, sft_total_steps(ctx.cfg.sft, len(data)))
    return train_sft(stage, data, num_dropped)


def train_sft(stage: TrainStage, data: list[Encoded], num_dropped: int = 0) -> dict:
    """The SFT stage's remaining steps (from stage.start) on encoded conversations, a
    checkpoint every sft.save_every_steps (default: every epoch). Returns the last step's
    metrics."""
    cfg, dist = stage.cfg.sft, stage.dist
    packed = use_packing(cfg.packing, stage.backend, "sft.packing")
    per_epoch = math.ceil(len(data) / cfg.global_batch_size)
    total = sft_total_steps(cfg, len(data))
    start, last_good, updater = stage.start, stage.last_good, stage.updater
    save_every = cfg.save_every_steps or per_epoch
    pad_id = stage.tokenizer.pad_token_id or 0
    metrics: dict = {}
    for step in range(start, total):
        t0 = time.perf_counter()
        epoch, mine = _step_batch(data, step, cfg, stage.cfg.run.seed, dist.rank, dist.world_size)
        count = stage.all_reduce_sum(torch.tensor([float(count_trained(mine))], dtype=torch.float64))
        num_tokens = max(1.0, count.item())
        loss_sum = 0.0
        for s in updater.accumulate(range(0, len(mine), cfg.micro_batch_size)):
            batch = _collate(mine[s:s + cfg.micro_batch_size], packed, pad_id,
                             stage.backend.device())
            loss = sft_micro_loss(stage.policy, batch, num_tokens)
            updater.backward(loss)
            loss_sum += loss.item()
        loss_total = stage.all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64)).item()
        lr = updater.lr
        grad_norm = updater.step(loss_total, f"sft step {step + 1}", last_good)
        elapsed = time.perf_counter() - t0
        metrics = {"loss": loss_total, "grad_norm": grad_norm, "lr": lr, "epoch": epoch,
                   "tokens": num_tokens, "tokens_per_s": num_tokens / elapsed,
                   "step_time_s": elapsed, "dropped_over_cutoff": num_dropped,
                   **stage.backend.memory_stats()}
        stage.writer.write("sft", step + 1, metrics, total=total)  # bar + a summary line / N
        if (step + 1) % save_every == 0 or step + 1 == total:
            last_good = str(save_checkpoint(stage.ckpt_dir("sft"), step + 1, model=stage.policy,
                                            optimizer=stage.optimizer,
                                            scheduler=stage.scheduler,
                                            extra={"stage": "sft", "epoch": epoch},
                                            keep_last=stage.cfg.checkpoint.keep_last,
                                            is_main=dist.is_main))
    return metrics
