"""PPO on the Tinker backend: the service's clipped `ppo` loss, with a baseline instead of a learned critic.

PPO (Schulman et al., 2017) as the local backend runs it samples one completion per prompt, scores it, and makes
`num_ppo_epochs` x `num_mini_batches` clipped updates on those rollouts. Tinker trains LoRA weights of a language
model and has no value head, so there is no learned critic and no GAE here: each completion's advantage is its reward
minus a baseline (`tinker.ppo_baseline`: the batch mean, a running mean, or none), the same for all its tokens,
whitened per batch when `training.whiten_advantages`. The KL penalty to the base model (`training.kl_coef`) is folded
into the per-token advantages, as the local PPO folds it into the per-token rewards. The run's log says all this.
"""

from __future__ import annotations

import statistics
import threading

from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker import rollouts
from fai_rl.backends.tinker.common import TinkerSession
from fai_rl.backends.tinker.rl_metrics import mean_metrics, update_metrics
from fai_rl.backends.tinker.rollouts import PreparedRL, RLAlgorithm
from fai_rl.config.schema import Recipe
from fai_rl.schedule import Schedule

HEADLINE = ("reward", "eval_reward", "kl", "completion_length", "policy_loss", "step_time_s")
prepare = rollouts.prepare  # API key, tokenizer, prompt rows, rewards, resume point
_EMA_DECAY = 0.9
_EMA_COUNTER = "ppo_ema_baseline"  # the ema baseline's running mean, saved with each state


def describe(recipe: Recipe, prepared: PreparedRL) -> str:
    t = recipe.training
    per_step = (f"{Schedule(recipe, len(prepared.train)).batch} prompts (per_device_train_batch_size {t.per_device_train_batch_size} x "
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
    print(f"PPO on Tinker: {_critic(recipe)}; clipped ppo loss (cliprange {t.cliprange}); KL coefficient "
          f"{t.kl_coef:g} to the base model", flush=True)
    # the ema baseline, carried from step to step and saved with each state (TinkerSession.counters), so a resumed
    # run goes on from the uninterrupted run's mean (issue 18: it restarted from the next batch's mean, which changed
    # every advantage of the resumed steps unless whitening took the shift out again). The counter is the mean after
    # the newest batch made: with tinker.max_steps_off_policy the next batch is made (in the sampler thread) before
    # the state is saved and is kept beside it, not made again on resume, so the mean must include it
    running: list[float | None] = [prepared.resume.counters.get(_EMA_COUNTER) if prepared.resume else None]
    counters: list[dict] = []  # the session's counters, from the first update on
    lock = threading.Lock()  # the sampler thread's advantages and the main thread's update both write the counter

    def keep() -> None:
        if counters and running[0] is not None:
            counters[0][_EMA_COUNTER] = running[0]

    def advantages(samples) -> tuple[list[float], dict]:
        with lock:
            values, running[0] = baseline_advantages([s.reward for s in samples], recipe.tinker.ppo_baseline,
                                                     running[0], t.whiten_advantages)
            keep()
        return values, {"eos_fraction": sum(s.stopped for s in samples) / len(samples)}

    def update(session: TinkerSession, samples, per_token, step: int) -> dict:
        with lock:
            counters[:] = [session.counters]
            keep()
        return _update(session, recipe, samples, per_token, step)

    algorithm = RLAlgorithm(
        per_prompt=1, kl_coef=t.kl_coef, reference=True, advantages=advantages, headline=HEADLINE, update=update,
        metric_names=local_names,
    )
    return rollouts.train_rl(recipe, prepared, run, algorithm,
                             critic="none (Tinker has no value head): baseline " + recipe.tinker.ppo_baseline)


def local_names(metrics: dict) -> dict:
    """The local PPO's names (backends/local/ppo.py): rewards/<fn>, completion_length; no std or completions/*."""
    out = {}
    for key, value in metrics.items():
        if key.startswith("rewards/") and key.endswith("/mean"):
            out[key.removesuffix("/mean")] = value
        elif key == "completions/mean_length":
            out["completion_length"] = value
        elif key == "loss":
            out["policy_loss"] = value
        elif not (key.startswith(("rewards/", "completions/")) or key in ("reward_std", "epoch")):
            out[key] = value
    return out


def _update(session: TinkerSession, recipe: Recipe, samples, per_token, step: int) -> dict:
    """num_ppo_epochs passes of num_mini_batches clipped updates; every update's two calls submitted together."""
    t, tinker = recipe.training, session.tinker
    data = [rollouts.rl_datum(tinker, s, adv_t) for s, adv_t in zip(samples, per_token, strict=True)]
    config = {"clip_low_threshold": 1 - t.cliprange, "clip_high_threshold": 1 + t.cliprange}
    size = len(data) // t.num_mini_batches
    pending = []
    for _ in range(t.num_ppo_epochs):
        for m in range(t.num_mini_batches):
            fb = session.training.forward_backward(data[m * size : (m + 1) * size], "ppo", config)
            pending.append((fb, session.training.optim_step(session.adam(step)), samples[m * size : (m + 1) * size]))
    updates = []
    for fb, opt, part in pending:  # all updates queued on the service, then awaited in order
        result = session.wait(fb, f"forward_backward at step {step + 1}")
        session.wait(opt, f"optim_step at step {step + 1}")
        updates.append(update_metrics(result, part))
    return mean_metrics(updates)
