"""fai_rl/backends/tinker/rl_metrics.py on hand-made samples, with the expected numbers worked out here: the
sampler-vs-trainer drift as tinker-cookbook computes it, the loss per completion token, and the batch statistics.
The same metrics from a real run on the local Tinker server: tests/test_backend_parity.py (GRPO) and
tests/test_tinker_backend.py (GRPO learning; GSPO and PPO).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fai_rl.backends.tinker.rl_metrics import batch_metrics, mean_metrics, sampler_drift, update_metrics
from fai_rl.backends.tinker.rollouts import Sample


def _sample(prompt_len: int, logprobs: list[float], reward: float = 0.0) -> Sample:
    return Sample(None, list(range(prompt_len)), [7] * len(logprobs), logprobs, "", True, reward)


def test_drift_is_the_mean_and_half_mean_square_of_sampler_minus_trainer_over_completion_tokens():
    # two samples: prompts of 3 and 2 tokens, so completions start at target 2 and 1; prompt targets are ignored
    a, b = _sample(3, [-0.5, -1.0]), _sample(2, [-2.0])
    trainer = [[9.0, 9.0, -0.4, -1.2], [9.0, -1.7]]
    diffs = [-0.5 + 0.4, -1.0 + 1.2, -2.0 + 1.7]  # -0.1, 0.2, -0.3
    got = sampler_drift([a, b], trainer)
    assert got["kl_sample_train"] == pytest.approx(sum(diffs) / 3)
    assert got["kl_sample_train_v2"] == pytest.approx(0.5 * sum(d * d for d in diffs) / 3)
    assert got["entropy"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert sampler_drift([a], [[0.0, 0.0, -0.5, -1.0]])["kl_sample_train"] == 0.0  # same weights, no drift


def test_update_metrics_read_the_trainer_logprobs_and_the_loss_from_a_forward_backward_result():
    import tinker

    s = _sample(2, [-1.0, -1.0])
    out = {"logprobs": tinker.TensorData.from_torch(torch.tensor([0.0, -0.9, -1.1])),
           "elementwise_loss": tinker.TensorData.from_torch(torch.tensor([0.0, 0.3, 0.5]))}
    with_sum = SimpleNamespace(metrics={"loss:sum": 0.6, "clip_ratio": 0.25}, loss_fn_outputs=[out])
    got = update_metrics(with_sum, [s])
    assert got["loss"] == pytest.approx(0.3) and got["clip_ratio/region_mean"] == 0.25
    assert got["kl_sample_train"] == pytest.approx(0.0, abs=1e-7) and got["kl_sample_train_v2"] == pytest.approx(0.005, rel=1e-5)
    # a service that reports no loss:sum: the elementwise losses, summed, per completion token
    assert update_metrics(SimpleNamespace(metrics={}, loss_fn_outputs=[out]), [s])["loss"] == pytest.approx(0.4)
    # several updates in a step: each key's mean over the updates reporting it
    assert mean_metrics([{"loss": 1.0, "kl": 0.5}, {"loss": 3.0}]) == {"loss": 2.0, "kl": 0.5}


def test_batch_metrics_count_tokens_advantages_and_groups_whose_rewards_are_all_equal():
    samples = [_sample(3, [-1.0], 1.0), _sample(3, [-1.0, -1.0], 1.0), _sample(4, [-1.0], 0.0),
               _sample(4, [-1.0], 1.0)]
    got = batch_metrics(samples, [0.0, 0.0, -1.0, 1.0], per_prompt=2)
    assert got == {"advantages/mean": 0.0, "advantages/std": pytest.approx(math.sqrt(0.5)), "tokens/prompt": 14.0,
                   "tokens/completion": 5.0, "frac_reward_zero_std": 0.5}
    assert "frac_reward_zero_std" not in batch_metrics(samples, [0.0] * 4, per_prompt=1)  # PPO: no groups


def test_drop_zero_variance_leaves_out_whole_groups_whose_rewards_are_all_equal():
    from fai_rl.backends.tinker.rl_metrics import drop_zero_variance

    rewards = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5]  # groups of 2: flat, mixed, flat, flat
    samples = [_sample(2, [-1.0], r) for r in rewards]
    advantages = [0.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    (kept, per_token, adv), dropped = drop_zero_variance((samples, [[a] for a in advantages], advantages), 2)
    assert dropped == 3 and kept == samples[2:4] and adv == [0.5, -0.5] and per_token == [[0.5], [-0.5]]
    (none, _, _), dropped = drop_zero_variance((samples[:2], [[0.0]] * 2, [0.0] * 2), 2)
    assert none == [] and dropped == 1  # nothing left: the driver makes no update that step
