"""PPO on the Tinker backend: the service's clipped `ppo` loss, with a baseline instead of a learned critic.

PPO (Schulman et al., 2017) as the local backend runs it samples one completion per prompt, scores it, and makes
`num_ppo_epochs` x `num_mini_batches` clipped updates on those rollouts. Tinker trains LoRA weights of a language
model and has no value head, so there is no learned critic and no GAE here: each completion's advantage is its reward
minus a baseline (`tinker.ppo_baseline`: the batch mean, a running mean, or none), the same for all its tokens,
whitened per batch when `training.whiten_advantages`. The KL penalty to the base model (`training.kl_coef`) is folded
into the per-token advantages, as the local PPO folds it into the per-token rewards. The run's log says all this.
"""

from __future__ import annotations

import random
import statistics
import time

from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker import rollouts
from fai_rl.backends.tinker.common import StepLog, TinkerSession, base_model, write_summary
from fai_rl.backends.tinker.rollouts import PreparedRL
from fai_rl.config.schema import Recipe

HEADLINE = ("reward", "eval_reward", "kl", "completion_length", "step_time_s")
prepare = rollouts.prepare  # API key, tokenizer, prompt rows, rewards, resume point
_EMA_DECAY = 0.9


def rollout_size(recipe: Recipe) -> int:
    """Prompts sampled per PPO step, as on the local backend (one process): per_device x gradient_accumulation_steps.
    The service takes each mini-batch whole, so there are no micro-batches here."""
    return recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps


def describe(recipe: Recipe, prepared: PreparedRL) -> str:
    t = recipe.training
    per_step = (f"{rollout_size(recipe)} prompts (per_device_train_batch_size {t.per_device_train_batch_size} x "
                f"gradient_accumulation_steps {t.gradient_accumulation_steps}) x 1 completion (up to "
                f"{t.max_completion_length} tokens), "
                f"{t.num_ppo_epochs} epochs x {t.num_mini_batches} mini-batches of the ppo loss; {_critic(recipe)}")
    return rollouts.describe(recipe, prepared, per_step)


def _critic(recipe: Recipe) -> str:
    return (f"no learned critic on Tinker (no value head): advantage = reward - {recipe.tinker.ppo_baseline} "
            "baseline")


def baseline_advantages(rewards: list[float], kind: str, running: float | None, whiten: bool
                        ) -> tuple[list[float], float | None]:
    """(advantages, the updated running mean) for one batch of rewards."""
    mean = sum(rewards) / len(rewards)
    if kind == "batch_mean":
        base = mean
    elif kind == "ema":
        base = mean if running is None else running
        running = mean if running is None else _EMA_DECAY * running + (1 - _EMA_DECAY) * mean
    else:
        base = 0.0
    advantages = [r - base for r in rewards]
    if whiten and len(advantages) > 1:
        centre, spread = statistics.fmean(advantages), statistics.pstdev(advantages)
        advantages = [(a - centre) / (spread + 1e-8) for a in advantages]
    return advantages, running


def train(recipe: Recipe, prepared: PreparedRL, run: RunDir) -> dict:
    t = recipe.training
    size = rollout_size(recipe)
    total = t.max_steps or max(1, int(t.num_train_epochs * len(prepared.train) // size))
    start = prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume)
    log = StepLog(run, total, HEADLINE)
    save_every = recipe.tinker.save_every or t.save_steps
    print(f"PPO on Tinker: {_critic(recipe)}; clipped ppo loss (cliprange {t.cliprange}); KL coefficient "
          f"{t.kl_coef:g} to the base model", flush=True)
    reference = (session.wait(session.service.create_sampling_client(base_model=base_model(recipe)),
                              "creating the reference sampler (base weights)") if t.kl_coef else None)
    began, generated, running = time.time(), 0, None
    ok = False
    try:
        sampler = session.sampling_client(f"sampler-{start:06d}")
        if start == 0 and prepared.eval:
            log(0, rollouts.evaluate_reward(session, sampler, prepared, recipe, 0))
        order = list(range(len(prepared.train)))
        random.Random(t.seed).shuffle(order)
        for step in range(start, total):
            step_began = time.time()
            rows = [prepared.train[order[(step * size + i) % len(order)]] for i in range(size)]
            samples = rollouts.sample(session, sampler, rows, 1, prepared, recipe, f"sampling at step {step + 1}")
            metrics = rollouts.score(samples, prepared, recipe)
            generated += sum(len(s.completion) for s in samples)
            advantages, running = baseline_advantages([s.reward for s in samples], recipe.tinker.ppo_baseline,
                                                      running, t.whiten_advantages)
            ref = rollouts.reference_logprobs(session, reference, samples) if reference else [None] * len(samples)
            per_token, kls = [], []
            for s, a, ref_t in zip(samples, advantages, ref, strict=True):
                adv_t, kl = rollouts.kl_adjusted(a, s, ref_t, t.kl_coef)
                per_token.append(adv_t)
                kls.append(kl)
            metrics["kl"] = sum(kls) / len(kls)
            metrics["learning_rate"] = session.adam(step, total).learning_rate
            metrics.update(_update(session, recipe, samples, per_token, step, total))
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
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "generated_tokens", generated,
                         critic="none (Tinker has no value head): baseline " + recipe.tinker.ppo_baseline)


def _update(session: TinkerSession, recipe: Recipe, samples, per_token, step: int, total: int) -> dict:
    """num_ppo_epochs passes of num_mini_batches clipped updates; every update's two calls submitted together."""
    t, tinker = recipe.training, session.tinker
    data = [rollouts.rl_datum(tinker, s, adv_t) for s, adv_t in zip(samples, per_token, strict=True)]
    config = {"clip_low_threshold": 1 - t.cliprange, "clip_high_threshold": 1 + t.cliprange}
    size = len(data) // t.num_mini_batches
    pending = []
    for _ in range(t.num_ppo_epochs):
        for m in range(t.num_mini_batches):
            fb = session.training.forward_backward(data[m * size : (m + 1) * size], "ppo", config)
            pending.append((fb, session.training.optim_step(session.adam(step, total))))
    out = {}
    for fb, opt in pending:  # all updates queued on the service, then awaited in order
        result = session.wait(fb, f"forward_backward at step {step + 1}")
        session.wait(opt, f"optim_step at step {step + 1}")
        out = {k: float(v) for k, v in (result.metrics or {}).items() if k.startswith("clip")}
    return out
