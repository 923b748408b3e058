"""Record verl's GRPO values on fixed inputs: the external truth tests/algo/test_verl_values.py
checks aster's objectives and advantages against. Run once, in an environment with verl 0.5.0
(the release the public ASTER reproduction, Rainyrou/ASTER, trains with):

    pip install --no-deps verl==0.5.0 tensordict omegaconf pandas ray pyvers
    python tests/algo/golden/record_verl_grpo.py > tests/algo/golden/verl_grpo.json

Functions called: verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage and
compute_policy_loss (token-mean), float64, the gradient of the loss w.r.t. log_prob by autograd.
Not imported by aster or its tests.
"""

import json

import numpy as np
import torch
import verl
from verl.trainer.ppo import core_algos

torch.manual_seed(1234)
B, T = 6, 9
rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
index = np.array([0, 0, 0, 1, 1, 1])  # two groups of 3
mask = (torch.rand(B, T) > 0.25).double()
mask[:, 0] = 1.0
token_rewards = torch.zeros(B, T, dtype=torch.float64)
last = mask.cumsum(1).argmax(1)
token_rewards[torch.arange(B), last] = rewards
adv, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, index)
old = -3 * torch.rand(B, T, dtype=torch.float64)
logp = old + 0.6 * torch.randn(B, T, dtype=torch.float64)  # ratios far outside the clip range

cases = []
for clip_c in (3.0, 1e9):  # verl always applies its dual clip; 1e9 turns it off in effect
    lp = logp.clone().requires_grad_(True)
    loss, clipfrac, ppo_kl, clipfrac_lower = core_algos.compute_policy_loss(
        old, lp, adv, mask, cliprange_low=0.2, cliprange_high=0.28, clip_ratio_c=clip_c,
        loss_agg_mode="token-mean")
    (grad,) = torch.autograd.grad(loss, [lp])
    cases.append({"clip_ratio_c": clip_c, "loss": loss.item(), "grad": grad.tolist(),
                  "ppo_kl": ppo_kl.item()})

print(json.dumps({
    "source": f"verl {verl.__version__}: verl.trainer.ppo.core_algos.compute_grpo_outcome_"
              "advantage (epsilon 1e-6, std norm) and compute_policy_loss (cliprange_low 0.2, "
              "cliprange_high 0.28, loss_agg_mode token-mean), float64",
    "group_index": index.tolist(), "rewards": rewards.tolist(), "mask": mask.tolist(),
    "old_log_prob": old.tolist(), "log_prob": logp.tolist(),
    "advantages": adv.tolist(), "cases": cases}, indent=1))
