import itertools
import math

import pytest
import torch

from orchestrator.phases import rl_math


def test_ranking_loss_is_the_mean_over_all_pairs_of_each_prompt():
    rewards = torch.tensor([[2.0, 0.5, -1.0, 0.3]])
    scores = torch.tensor([[4.0, 3.0, 1.0, 2.0]])           # oracle: 0 > 1 > 3 > 2
    preferred = rl_math.preference_matrix(scores, torch.ones(1, 4, dtype=torch.bool))
    loss, accuracy = rl_math.ranking_loss(rewards, preferred)
    pairs = [(w, l) for w, l in itertools.permutations(range(4), 2) if scores[0, w] > scores[0, l]]
    assert len(pairs) == math.comb(4, 2)
    expected = -sum(math.log(torch.sigmoid(rewards[0, w] - rewards[0, l]).item()) for w, l in pairs) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # reward order 0 > 1 > 3 > 2 agrees with the oracle on every pair
    assert accuracy.item() == 1.0


def test_tied_pairs_and_padded_responses_carry_no_preference():
    scores = torch.tensor([[1.0, 1.0, 0.0, 9.0]])
    valid = torch.tensor([[True, True, True, False]])
    preferred = rl_math.preference_matrix(scores, valid)
    assert preferred.sum().item() == 2                     # (0 > 2) and (1 > 2); the tie and the pad drop out
    assert not preferred[0, :, 3].any() and not preferred[0, 3, :].any()


def test_prompt_with_only_ties_does_not_change_the_loss():
    rewards = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    scores = torch.tensor([[1.0, 0.0], [5.0, 5.0]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    loss, _ = rl_math.ranking_loss(rewards, rl_math.preference_matrix(scores, valid))
    alone, _ = rl_math.ranking_loss(rewards[:1], rl_math.preference_matrix(scores[:1], valid[:1]))
    assert loss.item() == pytest.approx(alone.item())


def test_gae_on_a_hand_worked_example():
    # two tokens, γ = 1, λ = 0.5: δ1 = r1 − V1 = 1 − 0.5 = 0.5; δ0 = r0 + V1 − V0 = 0 + 0.5 − 0.2 = 0.3
    # A1 = 0.5; A0 = δ0 + γλ·A1 = 0.3 + 0.25 = 0.55; returns = A + V
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = rl_math.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.55, 0.5, 0.0])
    assert returns[0].tolist() == pytest.approx([0.75, 1.0, 0.0])


def test_gae_with_lambda_one_gives_monte_carlo_returns():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.1, 0.4]])
    mask = torch.ones(1, 3)
    _, returns = rl_math.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns[0].tolist() == pytest.approx([0.9, 0.8, 1.0])


def test_token_rewards_put_the_score_on_the_last_token_and_kl_everywhere():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = rl_math.token_rewards(torch.tensor([2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([-0.05, 2.0, 0.0])
    assert kl.tolist() == pytest.approx([0.5])


def test_policy_loss_is_zero_gradient_beyond_the_clip():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0]])
    loss, stats = rl_math.policy_loss(new, old, advantages, torch.ones(1, 2), clip_ratio=0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 1].item() != 0.0
    assert stats["clip_fraction"].item() == pytest.approx(0.5)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    loss = rl_math.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                              torch.ones(1, 1), value_clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)


def test_explained_variance_of_a_perfect_critic_is_one():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert rl_math.explained_variance(returns, returns, torch.ones(1, 3)).item() == pytest.approx(1.0)


def test_adaptive_kl_raises_beta_when_kl_is_above_target():
    controller = rl_math.AdaptiveKL(value=0.02, target=1.0)
    assert controller.update(kl=3.0) == pytest.approx(0.02 * 1.02)
    assert controller.update(kl=0.0) < 0.02 * 1.02


def test_advantages_of_micro_batches_of_different_widths_are_whitened_as_one_rollout():
    torch.manual_seed(0)
    short, long = torch.randn(3, 4), torch.randn(2, 7)              # rollouts that stopped at 4 and 7 tokens
    short_mask, long_mask = torch.ones(3, 4), torch.ones(2, 7)
    short_mask[0, 2:] = 0
    long_mask[1, 5:] = 0
    together = rl_math.whiten_together([short, long], [short_mask, long_mask])
    padded = torch.cat([torch.nn.functional.pad(short, (0, 3)), long])
    padded_mask = torch.cat([torch.nn.functional.pad(short_mask, (0, 3)), long_mask])
    reference = rl_math.masked_whiten(padded, padded_mask)          # the same tokens, padded to one width
    assert torch.allclose(together[0], reference[:3, :4], atol=1e-6)
    assert torch.allclose(together[1], reference[3:], atol=1e-6)
