"""A contextual bandit trained by the trainer's own GRPO step (tests only).

Each prompt is two tokens; the answer is one sampled token; the reward is 1 when it is the
prompt's target token. The optimum is known (P(target) = 1), the policy is a tiny Qwen3 in
memory, and every update goes through aster.train.rl.learn_from_rollouts: group advantages,
old log-probs, policy_update with the configured objective, the Updater (clipping, AdamW).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from aster.algo import PolicyForward
from aster.backend import select_backend
from aster.config import load_config
from aster.rollout.agent import Trajectory
from aster.train.common import TrainContext
from aster.train.rl import start_rl_stage
from aster.train.stage import TrainStage
from aster.train.strategy import build_strategy

VOCAB = 8
PROMPTS = [[1, 2], [1, 3], [1, 4], [1, 5]]
TARGETS = [6, 7, 5, 4]  # prompt i is rewarded for answering TARGETS[i]
GROUP = 16
# 4 prompts x 16 samples per step in 2 mini batches (the second sees ratios != 1), micro
# batches of 24 tokens (8 trajectories of 3), no grad-norm clipping in the way of a 1-token task
CONFIG = ["rl.prompts_per_step=4", "rl.mini_batch_prompts=2", f"rl.group_size={GROUP}",
          "rl.max_tokens_per_micro_batch=24", "rl.ppo_epochs=1", "rl.lr=0.02", "rl.weight_decay=0",
          "rl.max_grad_norm=100", "rl.stage1.max_response_tokens=1", "rollout.temperature=1.0",
          "distributed.strategy=none"]


# the stages' run directory: nothing is ever written to it (no checkpoint to resume from);
# one per process, removed at exit
_RUN_DIR = tempfile.TemporaryDirectory(prefix="aster-bandit-")


class _PadOnly:
    pad_token_id = 0


def tiny_policy(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=64,
                      vocab_size=VOCAB, max_position_embeddings=16, tie_word_embeddings=False,
                      attn_implementation="eager")
    return Qwen3ForCausalLM(cfg).float()


def bandit_context(model, overrides=(), model_dir=None) -> TrainStage:
    """An RL stage around `model`, set up as the trainer sets one up (start_rl_stage: the
    objective, AdamW from rl.*, the constant schedule, the Updater), in a fresh run directory
    (nothing to resume)."""
    cfg = load_config(None, [*CONFIG, *overrides])
    backend = select_backend("cpu", kernel_impl="chunked", engine="hf")
    ctx = TrainContext(cfg=cfg, backend=backend, policy=PolicyForward(model, backend.kernel_impl),
                       hf_model=model, tokenizer=_PadOnly(), model_dir=model_dir,
                       run_dir=Path(_RUN_DIR.name),
                       strategy=build_strategy(cfg.distributed, backend, torch.float32))
    return start_rl_stage(ctx, "bandit", cfg.rl.stage1, 100, warmup_steps=0)


@torch.no_grad()
def answer_logprobs(model) -> torch.Tensor:
    """[prompts, VOCAB] log p(answer | prompt) at temperature 1."""
    logits = model(torch.tensor(PROMPTS)).logits[:, -1].float()
    return torch.log_softmax(logits, dim=-1)


def p_target(model) -> float:
    """Mean over prompts of P(target | prompt): the rewarded behaviour's probability."""
    lp = answer_logprobs(model)
    return float(lp[torch.arange(len(PROMPTS)), torch.tensor(TARGETS)].exp().mean())


def rollouts(model, gen: torch.Generator) -> list[Trajectory]:
    """GROUP samples per prompt, as an engine returns them (token, its log-prob, reward)."""
    lp = answer_logprobs(model)
    out = []
    for p, prompt in enumerate(PROMPTS):
        answers = torch.multinomial(lp[p].exp(), GROUP, replacement=True, generator=gen)
        for a in answers.tolist():
            out.append(Trajectory(prompt_ids=list(prompt), response_ids=[a], loss_mask=[1],
                                  rollout_logprobs=[float(lp[p, a])],
                                  reward=float(a == TARGETS[p]), prompt_index=p))
    return out


def train(ctx, steps: int, seed: int = 0) -> list[dict]:
    """`steps` GRPO steps on fresh samples; returns each step's update metrics."""
    from aster.train.rl import learn_from_rollouts

    gen = torch.Generator().manual_seed(seed)
    return [learn_from_rollouts(ctx, rollouts(ctx.hf_model, gen), f"bandit step {s + 1}",
                                None)["metrics"] for s in range(steps)]
