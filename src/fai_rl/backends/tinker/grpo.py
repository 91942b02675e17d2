"""GRPO, GSPO and RLOO on the Tinker backend: sample groups on the service, score here, update by policy gradient.

GRPO (Shao et al., 2024): `num_generations` completions per prompt, advantage = reward minus the group mean, divided
by the group's (or batch's) std as `training.scale_rewards` says (fai_rl.rl_math.group_advantages, TRL's formula).
The update is the service's `importance_sampling` loss (or `ppo`, clipped at 1 -/+ epsilon, with `tinker.rl_loss`),
with the sampler's log-probs as the old policy. GSPO (Zheng et al., 2025) is `training.importance_sampling_level:
sequence` (gspo's default; grpo may set it too, as in TRL), the same loop with one clipped ratio per sequence
(fai_rl.rl_math.sequence_ratio_loss) computed here through `forward_backward_custom`: every server offers it (the local
test server has no built-in `gspo` loss) at the cost of one extra forward pass on the service. The loop is the Tinker
RL driver (rollouts.train_rl); steps, prompts per step and the learning rate are TRL's (fai_rl.schedule): a batch of
completions serves num_iterations optimizer steps. RLOO (Ahmadian et al., 2024) is the same loop with the
leave-one-out advantage (fai_rl.rl_math.leave_one_out_advantages), chosen by its spec's `advantage`; as in TRL, its
update is the clipped policy-gradient loss (`tinker.rl_loss: ppo`) or the unclipped importance-sampling one.

Departures: the KL term (training.beta > 0) is a per-token penalty on the advantages against the base model's
log-probs (a sampler on the base weights), not TRL's k3 term in the loss; `loss_type` normalisation is local-only
(the service sums the per-token losses).
"""

from __future__ import annotations

import torch

from fai_rl.algorithms import spec_of
from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker import rollouts
from fai_rl.backends.tinker.common import TinkerSession
from fai_rl.backends.tinker.rl_metrics import mean_metrics, update_metrics
from fai_rl.backends.tinker.rollouts import PreparedRL, RLAlgorithm
from fai_rl.config.schema import Recipe
from fai_rl.rl_math import group_advantages, leave_one_out_advantages, sequence_ratio_loss
from fai_rl.schedule import Schedule

HEADLINE = ("reward", "eval_reward", "kl", "completions/mean_length", "step_time_s")
prepare = rollouts.prepare  # API key, tokenizer, prompt rows, rewards, resume point


def describe(recipe: Recipe, prepared: PreparedRL) -> str:
    t = recipe.training
    schedule = Schedule(recipe, len(prepared.train))
    per_step = (f"{schedule.batch} prompts x {t.num_generations} completions (up to {t.max_completion_length} "
                f"tokens) per round, {t.num_iterations} optimizer step(s) per round, {schedule.total} steps; "
                f"loss {_loss_name(recipe)}")
    return rollouts.describe(recipe, prepared, per_step)


def _loss_name(recipe: Recipe) -> str:
    if recipe.training.importance_sampling_level == "sequence":
        return "GSPO sequence ratio (forward_backward_custom)"
    return recipe.tinker.rl_loss


def train(recipe: Recipe, prepared: PreparedRL, run: RunDir) -> dict:
    t = recipe.training
    print(f"objective: {_objective(recipe)}", flush=True)
    algorithm = RLAlgorithm(
        per_prompt=t.num_generations, kl_coef=t.beta or 0.0, reference=bool(t.beta),
        advantages=lambda samples: _advantages(samples, t), headline=HEADLINE, metric_names=lambda m: m,
        update=lambda session, samples, per_token, step: update_policy(session, recipe, samples, per_token, step, 1),
    )
    return rollouts.train_rl(recipe, prepared, run, algorithm)


# The group advantage estimators, by AlgorithmSpec.advantage: rewards of consecutive groups -> one advantage each.
ESTIMATORS = {
    "group": lambda rewards_n, t: group_advantages(rewards_n, t.num_generations, t.scale_rewards),
    "leave_one_out": lambda rewards_n, t: leave_one_out_advantages(rewards_n, t.num_generations),
}


def _advantages(samples, t) -> tuple[list[float], dict]:
    estimate = ESTIMATORS[spec_of(t.algorithm).advantage]
    advantages_n = estimate(torch.tensor([s.reward for s in samples]), t)
    return advantages_n.tolist(), {}  # frac_reward_zero_std and the other batch statistics: the driver's


def update_policy(session: TinkerSession, recipe: Recipe, samples, per_token, step: int, iterations: int) -> dict:
    """`iterations` x (forward_backward + optim_step) at step `step`'s learning rate, both calls of each submitted
    before either is awaited. Every completion is sent, advantage 0 or not: a batch of constant size keeps the
    service's compiled shapes warm (dropping the zero-advantage groups made each step a new shape, 5-10x slower on
    the test server), and the update is the same.

    `samples` need .prompt, .completion, .logprobs and .tokens() (rollouts.Sample); the workflow loop
    (fai_rl.backends.tinker.workflow) sends its steps through here too.
    """
    t, tinker = recipe.training, session.tinker
    data = [rollouts.rl_datum(tinker, s, adv_t) for s, adv_t in zip(samples, per_token, strict=True)]
    updates = []
    for _ in range(iterations):
        seen: dict = {}
        if t.importance_sampling_level == "sequence":
            fb = session.training.forward_backward_custom(data, _gspo_loss(samples, per_token, t, seen))
        elif recipe.tinker.rl_loss == "ppo":
            config = {"clip_low_threshold": 1 - t.epsilon, "clip_high_threshold": 1 + t.epsilon_high}
            fb = session.training.forward_backward(data, "ppo", config)
        else:
            fb = session.training.forward_backward(data, "importance_sampling")
        opt = session.training.optim_step(session.adam(step))
        result = session.wait(fb, f"forward_backward at step {step + 1}")
        session.wait(opt, f"optim_step at step {step + 1}")
        # the custom loss's own value (the service's loss:sum of a custom loss is its linearisation), and the trainer
        # log-probs it saw
        logprobs = seen.pop("logprobs", None)
        updates.append({**update_metrics(result, samples, logprobs), **seen})
    return mean_metrics(updates)


def _gspo_loss(samples, per_token, t, seen: dict):
    """The custom loss: logprobs_list[i] holds datum i's target log-probs under the current weights; its value is
    kept in `seen` as the logged loss, the log-probs for the drift metrics."""
    starts = [len(s.prompt) - 1 for s in samples]

    def loss_fn(data, logprobs_list):
        new = [lp[start : start + len(s.completion)] for lp, start, s in zip(logprobs_list, starts, samples,
                                                                             strict=True)]
        old = [torch.tensor(s.logprobs) for s in samples]
        advantages = [sum(adv) / len(adv) for adv in per_token]
        loss, metrics = sequence_ratio_loss(new, old, advantages, epsilon=t.epsilon,
                                            epsilon_high=t.epsilon_high)
        seen["loss"] = loss.item()
        seen["logprobs"] = [lp.detach().tolist() for lp in logprobs_list]
        return loss, metrics

    return loss_fn


def _objective(recipe: Recipe) -> str:
    t = recipe.training
    kind = ("GSPO (sequence-level ratio)" if t.importance_sampling_level == "sequence"
            else f"{t.algorithm.upper()} ({spec_of(t.algorithm).advantage} advantages, {recipe.tinker.rl_loss} loss)")
    return (f"{kind} on Tinker: reward = {' + '.join(f'{r.weight:g} x {r.function}' for r in recipe.rewards)}; "
            f"group of {t.num_generations}; KL coefficient {t.beta or 0:g}")
