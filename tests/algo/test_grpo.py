import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from aster.algo import (
    LOSSES,
    Penalties,
    PolicyForward,
    build_micro_batch,
    gather_tokens,
    global_token_count,
    group_advantages,
    local_token_count,
    micro_batch_loss,
    mini_batch_counts,
    mini_batches,
    policy_logprobs,
    shard_for_rank,
    split_indices,
    token_advantages,
)


def test_group_advantages_normalise_and_count_flat_groups():
    out = group_advantages([1, 0, 1, 0, 1, 1, 1, 1], group_size=4, std="population")
    assert out.num_groups == 2 and out.num_zero_groups == 1
    assert torch.allclose(out.adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-5)
    assert torch.equal(out.adv[4:], torch.zeros(4))
    centred = group_advantages([2, 0, 0, 0], group_size=4, std_norm=False)
    assert torch.allclose(centred.adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))


def test_group_advantages_rejects_partial_groups():
    with pytest.raises(ValueError):
        group_advantages([1, 0, 1], group_size=2)


def test_token_advantages_broadcast_under_mask():
    out = token_advantages(torch.tensor([2.0, -1.0]), [[1, 0, 1], [1, 1]])
    assert out[0].tolist() == [2.0, 0.0, 2.0] and out[1].tolist() == [-1.0, -1.0]


def test_batch_splitting():
    assert mini_batches(8, 2, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_indices(5, 2) == [[0, 1], [2, 3], [4]]
    shards = [shard_for_rank(list(range(5)), r, 2) for r in range(2)]
    assert sum(shards, []) == list(range(5))
    masks = [[1, 1, 0], [1], [0, 0]]
    assert local_token_count(masks, [0, 1, 2]) == 3
    assert global_token_count(3) == 3
    assert global_token_count(3, lambda t: t.mul_(2)) == 6


def _tiny_policy():
    torch.manual_seed(0)
    cfg = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, intermediate_size=128, vocab_size=50)
    return PolicyForward(Qwen3ForCausalLM(cfg).float(), kernel_impl="reference")


def _batch():
    prompts = [[1, 2, 3], [4, 5]]
    responses = [[6, 7, 8, 9], [10, 11, 12]]
    masks = [[1, 1, 0, 1], [1, 0, 1]]
    return prompts, responses, masks


def test_micro_batch_logprobs_match_full_logits():
    policy = _tiny_policy()
    prompts, responses, masks = _batch()
    mb = build_micro_batch(prompts, responses, masks)
    assert mb.num_tokens == 5
    logp = policy_logprobs(policy, mb, temperature=1.0)
    for b in range(2):
        ids = torch.tensor([prompts[b] + responses[b]])
        logits = policy.model(ids).logits[0].double().log_softmax(-1)
        expect = [logits[len(prompts[b]) + j - 1, responses[b][j]].item()
                  for j, m in enumerate(masks[b]) if m]
        got = logp[mb.traj_of_token == b].tolist()
        assert got == pytest.approx(expect, abs=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_does_not_depend_on_micro_batch_split(loss):
    """Every registered objective, with the KL and entropy terms on, through a real model's
    forward: one micro batch or two give the same loss and gradient."""
    policy = _tiny_policy()
    prompts, responses, masks = _batch()
    adv = token_advantages(torch.tensor([1.0, -0.5]), masks)
    counts = mini_batch_counts(masks, [0, 1])
    objective = LOSSES[loss](kernel_impl="reference") if loss in ("grpo", "dr_grpo") \
        else LOSSES[loss]()
    penalties = Penalties(kl_coef=0.2, entropy_coef=0.01)

    def loss_over(splits):
        policy.zero_grad()
        total = 0.0
        for idx in splits:
            mb = build_micro_batch([prompts[i] for i in idx], [responses[i] for i in idx],
                                   [masks[i] for i in idx])
            logp, entropy = policy_logprobs(policy, mb, 1.0, return_entropy=True)
            old = logp.detach() - 0.1
            loss, _ = micro_batch_loss(objective, logp, old, gather_tokens(adv, mb, idx),
                                       mb.traj_of_token, counts, penalties=penalties,
                                       ref_logp=logp.detach() + 0.05, entropy=entropy)
            loss.backward()
            total += loss.item()
        grad = policy.model.lm_head.weight.grad.clone()
        return total, grad

    whole, g_whole = loss_over([[0, 1]])
    split, g_split = loss_over([[0], [1]])
    assert whole == pytest.approx(split, abs=1e-6)
    assert torch.allclose(g_whole, g_split, atol=1e-6)


def test_group_advantages_default_to_the_sample_std_as_verl_and_trl():
    """verl's compute_grpo_outcome_advantage divides by torch.std and TRL's GRPOTrainer by
    Tensor.std(dim=1): both Bessel-corrected. At G=8 the population std makes advantages
    sqrt(8/7) = 1.069x larger."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)  # torch's default: n - 1
    assert torch.allclose(group_advantages(rewards, 8).adv, expected, atol=1e-6)
    population = group_advantages(rewards, 8, std="population").adv
    assert torch.allclose(population / expected, torch.full((8,), (8 / 7) ** 0.5), atol=1e-5)


def test_group_of_one_has_zero_advantage_under_either_std():
    for std in ("sample", "population"):
        out = group_advantages([1.0, 0.0, 1.0], 1, std=std)
        assert torch.equal(out.adv, torch.zeros(3)) and out.num_zero_groups == 3
    with pytest.raises(ValueError, match="std='bessel'"):
        group_advantages([1.0, 0.0], 2, std="bessel")


def test_adv_std_is_a_config_key():
    from aster.config import load_config
    from aster.errors import ConfigError

    assert load_config().rl.adv_std == "sample"
    assert load_config(None, ["rl.adv_std=population"]).rl.adv_std == "population"
    with pytest.raises(ConfigError, match="rl.adv_std"):
        load_config(None, ["rl.adv_std=bessel"])
