"""GRPO and GSPO on the Tinker backend: sample groups on the service, score here, update with a policy-gradient loss.

GRPO (Shao et al., 2024): `num_generations` completions per prompt, advantage = reward minus the group mean, divided
by the group's (or batch's) std as `training.scale_rewards` says (fai_rl.rl_math.group_advantages, TRL's formula).
The update is the service's `importance_sampling` loss (or `ppo`, clipped at 1 -/+ epsilon, with `tinker.rl_loss`),
with the sampler's log-probs as the old policy. GSPO (Zheng et al., 2025) is `training.algorithm: gspo`, the same loop
with one clipped ratio per sequence (fai_rl.rl_math.sequence_ratio_loss) computed here through
`forward_backward_custom`: every server offers it (the local test server has no built-in `gspo` loss) at the cost of
one extra forward pass on the service.

Departures: the KL term (training.beta > 0) is a per-token penalty on the advantages against the base model's
log-probs (a sampler on the base weights), not TRL's k3 term in the loss; `loss_type` normalisation is local-only
(the service sums the per-token losses).
"""

from __future__ import annotations

import time

import torch

from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker import rollouts
from fai_rl.backends.tinker.common import StepLog, TinkerSession, base_model, write_summary
from fai_rl.backends.tinker.rollouts import PreparedRL
from fai_rl.config.schema import Recipe
from fai_rl.rl_math import group_advantages, sequence_ratio_loss

HEADLINE = ("reward", "eval_reward", "kl", "completion_length", "step_time_s")
prepare = rollouts.prepare  # API key, tokenizer, prompt rows, rewards, resume point


def describe(recipe: Recipe, prepared: PreparedRL) -> str:
    t = recipe.training
    loss = "GSPO sequence ratio (forward_backward_custom)" if t.algorithm == "gspo" else recipe.tinker.rl_loss
    per_step = (f"{_prompts_per_step(recipe)} prompts x {t.num_generations} completions (up to "
                f"{t.max_completion_length} tokens); loss {loss}; {t.num_iterations} update(s) per batch")
    return rollouts.describe(recipe, prepared, per_step)


def _prompts_per_step(recipe: Recipe) -> int:
    t = recipe.training
    return max(1, t.per_device_train_batch_size * t.gradient_accumulation_steps // t.num_generations)


def train(recipe: Recipe, prepared: PreparedRL, run: RunDir) -> dict:
    t = recipe.training
    total = t.max_steps or max(1, int(t.num_train_epochs * len(prepared.train) // _prompts_per_step(recipe)))
    start = prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume)
    log = StepLog(run, total, HEADLINE)
    save_every = recipe.tinker.save_every or t.save_steps
    reference = None
    if t.beta:
        reference = session.wait(session.service.create_sampling_client(base_model=base_model(recipe)),
                                 "creating the reference sampler (base weights)")
    print(f"objective: {_objective(recipe)}", flush=True)
    began, generated = time.time(), 0
    ok = False
    try:
        sampler = session.sampling_client(f"sampler-{start:06d}")
        if start == 0 and prepared.eval:
            log(0, rollouts.evaluate_reward(session, sampler, prepared, recipe, 0))
        order = _prompt_order(prepared.train, t.seed)
        per_step = _prompts_per_step(recipe)
        for step in range(start, total):
            step_began = time.time()
            rows = [prepared.train[order[(step * per_step + i) % len(order)]] for i in range(per_step)]
            samples = rollouts.sample(session, sampler, rows, t.num_generations, prepared, recipe,
                                      f"sampling at step {step + 1}")
            metrics = rollouts.score(samples, prepared, recipe)
            generated += sum(len(s.completion) for s in samples)
            advantages_n = group_advantages(torch.tensor([s.reward for s in samples]), t.num_generations,
                                            t.scale_rewards).tolist()
            metrics["frac_reward_zero_std"] = _zero_std_fraction(samples, t.num_generations)
            ref = rollouts.reference_logprobs(session, reference, samples) if reference else [None] * len(samples)
            per_token, kls = [], []
            for s, a, ref_t in zip(samples, advantages_n, ref, strict=True):
                adv_t, kl = rollouts.kl_adjusted(a, s, ref_t, t.beta or 0.0)
                per_token.append(adv_t)
                kls.append(kl)
            if reference:
                metrics["kl"] = sum(kls) / len(kls)
            metrics["learning_rate"] = session.adam(step, total).learning_rate
            # Every completion is sent, advantage 0 or not: a batch of constant size keeps the service's compiled
            # shapes warm (dropping the zero-advantage groups made each step a new shape, 5-10x slower on the test
            # server), and the update is the same.
            metrics.update(update_policy(session, recipe, samples, per_token, step, total))
            sampler = session.sampling_client(f"sampler-{step + 1:06d}")
            metrics["step_time_s"] = time.time() - step_began
            log(step + 1, metrics)
            done = step + 1
            if prepared.eval and t.eval_steps and done % t.eval_steps == 0 and done != total:
                log(done, rollouts.evaluate_reward(session, sampler, prepared, recipe, done))
            if done % save_every == 0 and done != total:
                session.save_state(done)
        if prepared.eval:
            log(total, rollouts.evaluate_reward(session, sampler, prepared, recipe, total))
        runtime = time.time() - began
        final = session.finish(total, prepared.tokenizer)
        ok = True
    finally:
        session.close(ok)
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "generated_tokens", generated)


def update_policy(session: TinkerSession, recipe: Recipe, samples, per_token, step: int, total: int) -> dict:
    """num_iterations x (forward_backward + optim_step), both submitted before either is awaited.

    `samples` need .prompt, .completion, .logprobs and .tokens() (rollouts.Sample); the workflow loop
    (fai_rl.backends.tinker.workflow) sends its steps through here too.
    """
    t, tinker = recipe.training, session.tinker
    data = [rollouts.rl_datum(tinker, s, adv_t) for s, adv_t in zip(samples, per_token, strict=True)]
    out = {}
    for _ in range(t.num_iterations):
        if t.algorithm == "gspo":
            fb = session.training.forward_backward_custom(data, _gspo_loss(samples, per_token, t))
        elif recipe.tinker.rl_loss == "ppo":
            config = {"clip_low_threshold": 1 - t.epsilon, "clip_high_threshold": 1 + (t.epsilon_high or t.epsilon)}
            fb = session.training.forward_backward(data, "ppo", config)
        else:
            fb = session.training.forward_backward(data, "importance_sampling")
        opt = session.training.optim_step(session.adam(step, total))
        result = session.wait(fb, f"forward_backward at step {step + 1}")
        session.wait(opt, f"optim_step at step {step + 1}")
        out = {k: float(v) for k, v in (result.metrics or {}).items() if k.startswith("clip")}
    return out


def _gspo_loss(samples, per_token, t):
    """The custom loss: logprobs_list[i] holds datum i's target log-probs under the current weights."""
    starts = [len(s.prompt) - 1 for s in samples]

    def loss_fn(data, logprobs_list):
        new = [lp[start : start + len(s.completion)] for lp, start, s in zip(logprobs_list, starts, samples,
                                                                             strict=True)]
        old = [torch.tensor(s.logprobs) for s in samples]
        advantages = [sum(adv) / len(adv) for adv in per_token]
        return sequence_ratio_loss(new, old, advantages, epsilon=t.epsilon, epsilon_high=t.epsilon_high or t.epsilon)

    return loss_fn


def _zero_std_fraction(samples, group: int) -> float:
    groups = [samples[i : i + group] for i in range(0, len(samples), group)]
    return sum(len({s.reward for s in g}) == 1 for g in groups) / len(groups)


def _prompt_order(rows: list, seed: int) -> list[int]:
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return order


def _objective(recipe: Recipe) -> str:
    t = recipe.training
    kind = "GSPO (sequence-level ratio)" if t.algorithm == "gspo" else f"GRPO ({recipe.tinker.rl_loss} loss)"
    return (f"{kind} on Tinker: reward = {' + '.join(f'{r.weight:g} x {r.function}' for r in recipe.rewards)}; "
            f"group of {t.num_generations}; KL coefficient {t.beta or 0:g}")
