"""The advantage and loss maths shared by the backends (fai_rl.rl_math), on hand-made tensors worked out here."""

from __future__ import annotations

import math

import pytest
import torch

from fai_rl.backends.tinker.ppo import baseline_advantages
from fai_rl.rl_math import dpo_losses, group_advantages, sequence_ratio_loss

T = torch.tensor


def test_group_advantages_centre_each_group_and_scale_by_its_std():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3); group 2 all equal -> advantages 0.
    adv = group_advantages(T([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]), 4, "group")
    s = math.sqrt(1 / 3)
    expected = [0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4), 0, 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_group_advantages_batch_scale_and_no_scale():
    rewards = T([1.0, 0.0, 3.0, 1.0])  # groups of 2: means 0.5 and 2
    assert group_advantages(rewards, 2, "none").tolist() == [0.5, -0.5, 1.0, -1.0]
    batch_std = rewards.std().item()  # unbiased std of all four: sqrt(((-.25)^2+(-1.25)^2+1.75^2+(-.25)^2)/3)
    assert batch_std == pytest.approx(math.sqrt((0.0625 + 1.5625 + 3.0625 + 0.0625) / 3))
    assert group_advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [a / (batch_std + 1e-4) for a in (0.5, -0.5, 1.0, -1.0)])
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


def test_dpo_sigmoid_loss_and_metrics_by_hand():
    # policy - reference log-ratios: chosen +1, rejected -1 -> margin h = 2; beta 0.5 -> loss = -log sigmoid(1).
    loss, m = dpo_losses(T([-1.0]), T([-5.0]), T([-2.0]), T([-4.0]), beta=0.5, loss_types=["sigmoid"])
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    assert m == pytest.approx({"rewards/chosen": 0.5, "rewards/rejected": -0.5, "rewards/margins": 1.0,
                               "rewards/accuracies": 1.0})
    # label smoothing 0.1: 0.9 * -log s(1) + 0.1 * -log s(-1)
    smoothed, _ = dpo_losses(T([-1.0]), T([-5.0]), T([-2.0]), T([-4.0]), beta=0.5, loss_types=["sigmoid"],
                             label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1)))


def test_dpo_hinge_ipo_sft_and_weights_by_hand():
    args = (T([-1.0, -3.0]), T([-5.0, -2.0]), T([-2.0, -2.0]), T([-4.0, -4.0]))
    # margins h: pair 1: (+1) - (-1) = 2; pair 2: (-1) - (+2) = -3
    hinge, m = dpo_losses(*args, beta=0.5, loss_types=["hinge"])
    assert hinge.item() == pytest.approx((max(0, 1 - 1.0) + max(0, 1 + 1.5)) / 2)
    assert m["rewards/accuracies"] == 0.5
    lengths = T([2.0, 1.0])  # ipo averages per token: h / len - 1 / (2 beta)
    ipo, _ = dpo_losses(*args, beta=0.5, loss_types=["ipo"], chosen_lengths_b=lengths)
    assert ipo.item() == pytest.approx(((2 / 2 - 1) ** 2 + (-3 / 1 - 1) ** 2) / 2)
    both, _ = dpo_losses(*args, beta=0.5, loss_types=["hinge", "sft"], loss_weights=[1.0, 0.5],
                         chosen_lengths_b=lengths)
    sft = (1.0 / 2 + 3.0 / 1) / 2  # chosen NLL per token
    assert both.item() == pytest.approx(hinge.item() + 0.5 * sft)


def test_dpo_loss_gradient_raises_the_chosen_and_lowers_the_rejected():
    chosen, rejected = T([-3.0], requires_grad=True), T([-3.0], requires_grad=True)
    loss, _ = dpo_losses(chosen, rejected, T([-3.0]), T([-3.0]), beta=0.1, loss_types=["sigmoid"])
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(0.05)  # beta * s(0)


def test_gspo_sequence_ratio_is_the_geometric_mean_and_clips_by_hand():
    # token log-ratios 0.1 and -0.3 -> mean -0.1 -> ratio e^-0.1 = 0.905, outside [0.9997, 1.0004]: clipped.
    new = [T([-1.0, -2.0], requires_grad=True)]
    old = [T([-1.1, -1.7])]
    loss, m = sequence_ratio_loss(new, old, [1.0], epsilon=3e-4, epsilon_high=4e-4)
    ratio = math.exp(-0.1)
    assert loss.item() == pytest.approx(-ratio)  # min(r A, clip(r) A) with A = 1 takes the smaller r
    assert m == {"clip_ratio": 1.0}
    loss.backward()  # unclipped branch is the minimum: d(-r)/d new_t = -r / 2 for each of the 2 tokens
    assert new[0].grad.tolist() == pytest.approx([-ratio / 2, -ratio / 2])
    # negative advantage: -min(r * -1, clip(r) * -1) = max(r, clip(r)) -> the clipped 0.9997, no gradient
    loss, m = sequence_ratio_loss([T([-1.0, -2.0])], old, [-1.0], epsilon=3e-4, epsilon_high=4e-4)
    assert loss.item() == pytest.approx(1 - 3e-4)


def test_ppo_baselines_on_tinker_by_hand():
    assert baseline_advantages([1.0, 0.0, 0.0, 1.0], "batch_mean", None, False) == ([0.5, -0.5, -0.5, 0.5], None)
    assert baseline_advantages([1.0, 0.0], "none", None, False) == ([1.0, 0.0], None)
    first, running = baseline_advantages([1.0, 0.0], "ema", None, False)
    assert first == [0.5, -0.5] and running == 0.5
    second, running = baseline_advantages([1.0, 1.0], "ema", running, False)
    assert second == [0.5, 0.5] and running == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    whitened, _ = baseline_advantages([1.0, 0.0, 0.0, 1.0], "batch_mean", None, True)
    assert whitened == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-6)


# ---- workflow maths (fai_rl.workflows): rLLM-style keyed groups, the token-level policy loss, pass@k


def test_keyed_group_advantages_use_population_std_per_key_and_zero_singletons():
    from fai_rl.rl_math import keyed_group_advantages

    # key a: 1, 0, 0, 0 (interleaved with b) -> mean 0.25, population std sqrt(0.25 * 0.75) = 0.4330
    # key b: 2, 0 -> mean 1, std 1 -> +1, -1; key c alone -> 0; key d all equal -> 0
    rewards = [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.5, 0.5]
    keys = ["a", "b", "a", "b", "a", "a", "c", "d", "d"]
    s = math.sqrt(0.25 * 0.75)
    assert keyed_group_advantages(rewards, keys) == pytest.approx(
        [0.75 / s, 1.0, -0.25 / s, -1.0, -0.25 / s, -0.25 / s, 0.0, 0.0, 0.0])
    assert keyed_group_advantages(rewards, keys, norm_by_std=False) == pytest.approx(
        [0.75, 1.0, -0.25, -1.0, -0.25, -0.25, 0.0, 0.0, 0.0])


def test_token_policy_loss_is_a_token_mean_and_clips_by_hand():
    from fai_rl.rl_math import token_policy_loss

    # on-policy (ratio 1): -(A1 * 2 tokens + A2 * 1 token) / 3 tokens = -(2 * 1 - 0.5) / 3
    new = [T([-1.0, -2.0]), T([-0.5])]
    loss, m = token_policy_loss(new, [x.clone() for x in new], [1.0, -0.5], epsilon=0.2, epsilon_high=0.2)
    assert loss.item() == pytest.approx(-0.5) and m == {"clip_ratio": 0.0}
    # ratio e^0.5 = 1.65 with A = 1 is clipped to 1.2; the other token (ratio 1) is not: -(1.2 + 1) / 2
    loss, m = token_policy_loss([T([-0.5, -1.0])], [T([-1.0, -1.0])], [1.0], epsilon=0.2, epsilon_high=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2) and m == {"clip_ratio": 0.5}
    # total_tokens divides instead (micro-batches, skipped zero-advantage sequences): -(1.2 + 1) / 10
    loss, _ = token_policy_loss([T([-0.5, -1.0])], [T([-1.0, -1.0])], [1.0], epsilon=0.2, epsilon_high=0.2,
                                total_tokens=10)
    assert loss.item() == pytest.approx(-0.22)


def test_pass_at_k_is_the_unbiased_estimator():
    from fai_rl.rl_math import pass_at_k

    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)  # 1 - C(6,4)/C(8,4)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 2, 1) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)
