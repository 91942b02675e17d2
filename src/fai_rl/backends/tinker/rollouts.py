"""The RL driver of the Tinker backend (GRPO/GSPO/RLOO and PPO are configurations of it), with its sampling and scoring.

The service samples (SamplingClient) and reports each sampled token's log-probability under the weights that
sampled it; those are the "old" log-probs of the importance ratio. Rewards are scored here, with the same reward
functions as the local backend (fai_rl.rewards), so a recipe's rewards mean the same thing on both backends.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fai_rl.artifacts import RunDir
from fai_rl.transcripts import due, write_transcript
from fai_rl.backends.tinker.common import (
    StepLog,
    TinkerResume,
    TinkerSession,
    base_model,
    check_api_key,
    datum,
    find_tinker_resume,
    load_round_file,
    save_round_file,
    write_summary,
)
from fai_rl.backends.tinker.rl_metrics import batch_metrics, drop_zero_variance, timed, transcript_rows
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import load_prompt_rows, render_prompts
from fai_rl.data.truncation import Truncations
from fai_rl.models.load import load_tokenizer
from fai_rl.progress import stop_requested
from fai_rl.sampling import render_chat, sample_tinker, stop_token_ids
from fai_rl.schedule import Schedule


@dataclass
class PreparedRL:
    tokenizer: object
    train: list[dict]
    eval: list[dict]
    rewards: list
    resume: TinkerResume | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedRL:
    """API key, tokenizer, prompt rows, reward functions and the resume point; nothing written, no service call."""
    from fai_rl.rewards import recipe_rewards

    check_api_key()
    resume_point = find_tinker_resume(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_prompt_rows(recipe)
    return PreparedRL(tokenizer, train, evaluation, recipe_rewards(recipe), resume_point)


def describe(recipe: Recipe, prepared: PreparedRL, per_step: str) -> str:
    from fai_rl.rewards import preview_rewards

    tok, p = prepared.tokenizer, prepared
    cuts = Truncations("prompt", recipe.data.max_length)
    lengths = [len(render_chat(tok, row["prompt"])) for row in p.train]
    render_prompts(tok, p.train, recipe.data.max_length, cuts)
    lines = [
        f"prompts: {len(p.train)} train, {len(p.eval)} eval; prompt tokens min {min(lengths)} max {max(lengths)}; "
        f"{cuts.rows} longer than data.max_length={recipe.data.max_length} (cut from the left when sampled, counted "
        "per step as truncated_prompts)",
        f"per step: {per_step}; LoRA rank {recipe.tinker.lora_rank} on the service",
    ]
    for n, row in enumerate(p.train[:2], start=1):
        text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        lines.append(f"--- prompt {n} ({lengths[n - 1]} tokens; answer {row.get('answer')!r})")
        lines.append(text.replace("\n", "\\n"))
    lines.append(str(preview_rewards(p.rewards, p.train)))
    if p.resume is not None:
        lines.append(f"resume: from {p.resume.path} (step {p.resume.step})")
    return "\n".join(lines)


@dataclass
class Sample:
    row: dict
    prompt: list[int]
    completion: list[int]  # as sampled, including the end-of-turn token when the model stopped
    logprobs: list[float]  # the sampler's log-prob of each completion token
    text: str
    stopped: bool  # ended with an end-of-turn token (else cut at max_completion_length)
    reward: float = 0.0
    sampled_at: int = 0  # optimizer steps the sampler's weights had (tinker.max_steps_off_policy)
    staleness: int = 0  # optimizer steps between the sampler's weights and those it first trained (0: on-policy)

    def tokens(self) -> list[int]:
        return self.prompt + self.completion


def sample(session: TinkerSession, sampler, rows: list[dict], per_prompt: int, prepared: PreparedRL,
           recipe: Recipe, what: str, cuts: Truncations) -> list[Sample]:
    """`per_prompt` completions of each row, grouped consecutively; all requests are sent before any is awaited.
    Prompts longer than data.max_length are cut from the left and counted into `cuts`."""
    tinker, t, tok = session.tinker, recipe.training, prepared.tokenizer
    params = tinker.SamplingParams(max_tokens=t.max_completion_length, temperature=t.temperature, top_p=t.top_p,
                                   stop=stop_token_ids(tok))
    prompts = render_prompts(tok, rows, recipe.data.max_length, cuts)
    # seeded from training.seed and `what` ("sampling at step N"): a resumed run draws what the uninterrupted one drew
    seed = zlib.crc32(f"{t.seed}:{what}".encode()) & 0x3FFFFFFF
    groups = sample_tinker(sampler, tinker, tok, prompts, per_prompt, params, session.wait, what, seed)
    return [Sample(row, ids, c.tokens, c.logprobs, c.text, c.stopped)
            for row, ids, group in zip(rows, prompts, groups, strict=True) for c in group]


def score(samples: list[Sample], prepared: PreparedRL, recipe: Recipe, group: int) -> dict[str, float]:
    """Set each sample's reward (weighted total, minus missing_eos_penalty); the batch's metrics under TRL's GRPO
    names (the local backend's): reward, reward_std (mean within-group std), rewards/<fn>/mean and /std,
    completions/*."""
    from fai_rl.rewards import score_rewards

    rows = [s.row for s in samples]
    totals, per_fn = score_rewards(prepared.rewards, [r["prompt"] for r in rows], [s.text for s in samples], rows)
    penalty = recipe.training.missing_eos_penalty
    for s, total in zip(samples, totals, strict=True):
        s.reward = total - (penalty if penalty is not None and not s.stopped else 0.0)
    rewards = [s.reward for s in samples]
    groups = [rewards[i : i + group] for i in range(0, len(rewards), group)]
    lengths = [len(s.completion) for s in samples]
    ended = [len(s.completion) for s in samples if s.stopped] or [0]
    metrics = {"reward": statistics.fmean(rewards),
               "reward_std": statistics.fmean(_std(g) for g in groups),
               "completions/mean_length": statistics.fmean(lengths),
               "completions/min_length": float(min(lengths)),
               "completions/max_length": float(max(lengths)),
               "completions/clipped_ratio": sum(not s.stopped for s in samples) / len(samples),
               "completions/mean_terminated_length": statistics.fmean(ended),
               "completions/min_terminated_length": float(min(ended)),
               "completions/max_terminated_length": float(max(ended))}
    for name, scores in per_fn.items():
        given = [x for x in scores if x is not None]
        metrics[f"rewards/{name}/mean"] = statistics.fmean(given) if given else math.nan
        metrics[f"rewards/{name}/std"] = _std(given) if given else math.nan
    return metrics


def _std(values: list[float]) -> float:
    """torch.std's (unbiased; nan for one value), as TRL reports it."""
    return statistics.stdev(values) if len(values) > 1 else math.nan


def reference_logprobs(session: TinkerSession, reference, samples: list[Sample]) -> list[list[float]]:
    """Each completion token's log-prob under the reference (the base model), all requests sent first."""
    futures = [reference.compute_logprobs(session.tinker.ModelInput.from_ints(s.tokens())) for s in samples]
    out = []
    for s, future in zip(samples, futures, strict=True):
        full = session.wait(future, "reference log-probs")
        out.append([float(x) for x in full[len(s.prompt) :]])
    return out


def rl_datum(tinker, s: Sample, advantages_t: list[float]):
    """Datum for the service's policy-gradient losses: targets, the sampler's log-probs and per-token advantages.

    Prompt positions carry advantage 0 (no gradient); completion token j is target len(prompt) - 1 + j.
    """
    n_prompt_targets = len(s.prompt) - 1
    return datum(tinker, s.tokens(), logprobs=[0.0] * n_prompt_targets + s.logprobs,
                 advantages=[0.0] * n_prompt_targets + advantages_t)


def kl_adjusted(advantage: float, s: Sample, ref_t: list[float] | None, coef: float) -> tuple[list[float], float]:
    """Per-token advantages with a KL penalty to the reference (k1: coef * (log pi_old - log pi_ref)); the mean KL."""
    if ref_t is None or coef == 0:
        return [advantage] * len(s.completion), 0.0
    kl_t = [lp - ref for lp, ref in zip(s.logprobs, ref_t, strict=True)]
    return [advantage - coef * k for k in kl_t], sum(kl_t) / max(1, len(kl_t))


def evaluate_reward(session: TinkerSession, sampler, prepared: PreparedRL, recipe: Recipe, step: int) -> dict:
    """eval_reward: mean reward of num_generations_eval samples (GRPO default num_generations; PPO 1) per prompt."""
    t = recipe.training
    per_prompt = t.num_generations_eval
    cuts = Truncations("prompt", recipe.data.max_length)
    samples = sample(session, sampler, prepared.eval, per_prompt, prepared, recipe, f"evaluation at step {step}", cuts)
    metrics = score(samples, prepared, recipe, per_prompt)
    return {"eval_reward": metrics["reward"], **{f"eval_{k}": v for k, v in cuts.metrics().items()}}


@dataclass
class RLAlgorithm:
    """An RL algorithm on the Tinker driver: how it samples, its advantages, its update and its metric names."""

    per_prompt: int  # completions sampled per prompt
    kl_coef: float  # per-token KL penalty to the base model, folded into the advantages
    reference: bool  # score completions under the base model (the logged kl), even with kl_coef 0
    advantages: Callable[[list[Sample]], tuple[list[float], dict]]  # one per sample, plus metrics
    update: Callable[[TinkerSession, list[Sample], list[list[float]], int], dict]  # optimizer step `step`'s update
    metric_names: Callable[[dict], dict]  # the local backend's names for this algorithm's metrics
    headline: tuple[str, ...]


def train_rl(recipe: Recipe, prepared: PreparedRL, run: RunDir, algorithm: RLAlgorithm, **summary) -> dict:
    """Sample, score and update for the schedule's steps, evaluating and saving on the way; final/ and summary.json.

    A batch of completions serves every optimizer step of its round (fai_rl.schedule: GRPO's num_iterations, as
    TRL); its metrics are logged at the round's first step, the learning rate and the update's at every step
    (fai_rl.backends.tinker.rl_metrics says what each is); rollout transcripts every training.log_rollouts_every steps.
    """
    t = recipe.training
    schedule = Schedule(recipe, len(prepared.train))
    total, start = schedule.total, prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume, schedule)
    log = StepLog(run, total, algorithm.headline)
    save_every = recipe.tinker.save_every
    reference = None
    if algorithm.reference:  # model.init_from: the starting weights, else the base model
        reference = (session.init_reference(start) if recipe.model.init_from else
                     session.wait(session.service.create_sampling_client(base_model=base_model(recipe)),
                                  "creating the reference sampler (base weights)"))
    began, tokens, ok = time.time(), 0, False
    before = session.counters.get("num_tokens", 0)  # a resumed run goes on counting (saved with each state)
    generated = session.counters.get("generated_tokens", 0)  # likewise, the whole run's in summary.json
    batch_key, batch = None, None
    cut = Truncations("prompt", recipe.data.max_length)  # the run's prompts cut to data.max_length: one line at the end
    cut.add(Truncations("prompt", None, **session.counters.get("prompt_cuts", {})))  # and in summary.json

    def make_batch(step: int, sampler, version: int) -> tuple[dict, tuple[list, list, list], list[Sample]]:
        """Sample, score and weigh the round that starts at `step` on `sampler` (weights after `version` steps)."""
        metrics: dict = {}
        rows = [prepared.train[i] for i in schedule.rows(step)]
        cuts = Truncations("prompt", recipe.data.max_length)
        with timed(metrics, "sample"):
            samples = sample(session, sampler, rows, algorithm.per_prompt, prepared, recipe,
                             f"sampling at step {step + 1}", cuts)
        metrics.update(cuts.metrics())
        cut.add(cuts)  # one make_batch at a time (the prefetch is submitted after the previous one returned)
        for s in samples:
            s.sampled_at = version
        with timed(metrics, "score"):
            metrics.update(score(samples, prepared, recipe, algorithm.per_prompt))
            advantages, extra = algorithm.advantages(samples)
            ref = reference_logprobs(session, reference, samples) if reference else [None] * len(samples)
        metrics.update(extra)
        metrics.update(batch_metrics(samples, advantages, algorithm.per_prompt))
        per_token, kls = [], []
        for s, a, ref_t in zip(samples, advantages, ref, strict=True):
            adv_t, kl = kl_adjusted(a, s, ref_t, algorithm.kl_coef)
            per_token.append(adv_t)
            kls.append(kl)
        if reference:
            metrics["kl"] = statistics.fmean(kls)
        made = samples, per_token, advantages
        if t.drop_zero_variance_groups:
            made, metrics["groups_dropped"] = drop_zero_variance(made, algorithm.per_prompt)
        return metrics, made, samples

    def evaluates(done: int) -> bool:
        return bool(prepared.eval) and (done == total or bool(t.eval_steps and done % t.eval_steps == 0))

    # tinker.max_steps_off_policy: 1 samples the next round in a thread while this step's update runs on the service
    pool = ThreadPoolExecutor(1, thread_name_prefix="fai-rl-sampler") if recipe.tinker.max_steps_off_policy else None
    prefetched, version = None, start  # version: optimizer steps in `sampler`'s weights
    try:
        sampler = session.sampling_client(f"sampler-{start:06d}")
        if start == 0 and prepared.eval:
            log(0, evaluate_reward(session, sampler, prepared, recipe, 0))
        for step in range(start, total):
            step_began, metrics = time.time(), {}
            if step == start and start:
                mid_round = schedule.round_of(start - 1) == schedule.round_of(start)
                if mid_round:
                    batch = load_round(run.path, start)  # resumed mid-round: the batch the round's first step sampled
                    batch_key = schedule.round_of(start) if batch is not None else None
                if batch_key is not None or not mid_round:  # and the next round, when it was sampled ahead
                    prefetched = load_ahead(run.path, start, noted=pool is not None)
            if schedule.round_of(step) != batch_key:
                batch_key = schedule.round_of(step)
                made, batch, samples = (prefetched.result() if prefetched is not None
                                        else make_batch(step, sampler, version))
                prefetched = None
                metrics.update(made)
                for s in samples:
                    s.staleness = step - s.sampled_at
                metrics["off_policy_steps"] = statistics.fmean(s.staleness for s in samples)
                generated += sum(len(s.completion) for s in samples)
                session.counters["generated_tokens"] = generated
                tokens += sum(len(s.tokens()) for s in samples)
                metrics["num_tokens"] = session.counters["num_tokens"] = before + tokens
            done = step + 1
            new_round = done < total and schedule.round_of(done) != batch_key
            if pool is not None and new_round and prefetched is None:  # on the weights before this update
                prefetched = pool.submit(make_batch, done, sampler, version)
            metrics["learning_rate"] = schedule.learning_rate(step)
            metrics["epoch"] = schedule.epoch(step)
            if batch[0]:  # every group dropped: no update this step (the optimizer and its schedule wait)
                with timed(metrics, "train"):
                    metrics.update(algorithm.update(session, *batch[:2], step))
            if due(done, t.log_rollouts_every):
                shown, _, shown_advantages = batch
                write_transcript(run.path, done, transcript_rows(prepared.tokenizer, shown,
                                                                             shown_advantages, algorithm.per_prompt))
            eval_due = evaluates(done)
            if eval_due or new_round:
                with timed(metrics, "wait"):
                    sampler = session.sampling_client(f"sampler-{done:06d}")
                    version = done
            metrics["step_time_s"] = time.time() - step_began
            log(done, algorithm.metric_names(metrics))
            if eval_due and done != total:
                log(done, evaluate_reward(session, sampler, prepared, recipe, done))
            if done < total and (done % save_every == 0 or stop_requested(run.path)):  # before the state that needs it
                if not new_round:
                    save_round(run.path, done, batch)
                    # off-policy, the next round is sampled at this round's last step on the sampler in use now (no
                    # evaluation before it renews it), on weights no later state holds: sample it now, to keep it
                    upcoming = next((s for s in range(done, total) if schedule.round_of(s) != batch_key), None)
                    if pool is not None and prefetched is None and upcoming is not None and not any(
                            evaluates(d) for d in range(done + 1, upcoming)):
                        prefetched = pool.submit(make_batch, upcoming, sampler, version)
                if prefetched is not None:
                    save_ahead(run.path, done, prefetched.result())
            # saved with the next state (none is made meanwhile: the batch made ahead is awaited above), cuts of the
            # batch made ahead included, since a resume takes that batch as it is
            session.counters["prompt_cuts"] = {"seen": cut.seen, "rows": cut.rows, "tokens": cut.tokens}
            if done % save_every == 0 and done != total:
                session.save_state(done)
            session.stop_if_asked(done, total)  # fai-rl-runs stop: state saved, RunStopped
        if prepared.eval:
            log(total, evaluate_reward(session, sampler, prepared, recipe, total))
        cut.report("train prompts sampled")
        runtime = time.time() - began
        final = session.finish(total, prepared.tokenizer)
        ok = True
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        session.close(ok)
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "generated_tokens", generated,
                         truncated_prompts=cut.rows, truncated_prompt_tokens=cut.tokens, **summary)


def save_round(out: Path, step: int, batch: tuple[list[Sample], list, list]) -> None:
    """Keep the batch (samples, per-token advantages, advantages) that the rest of a round trains on, beside the
    state saved at `step` in its middle (num_iterations > 1): a Tinker state holds weights and optimizer, not the
    completions the round's first step sampled on weights no state holds, so without it a resumed run sampled anew
    and left the uninterrupted run's path (issue 18)."""
    samples, per_token, advantages = batch
    save_round_file(out, "step", step, {"samples": [asdict(s) for s in samples], "per_token": per_token,
                                        "advantages": advantages})


def load_round(out: Path, step: int) -> tuple[list[Sample], list, list] | None:
    """The batch save_round kept for the state at `step`; None (with a note: the round is sampled again on the
    resumed weights) when the run dir does not have it."""
    data = load_round_file(out, "step", step, (
        "the batch of the round it resumes in the middle of",
        "the rest of the round trains on completions sampled anew, not on the uninterrupted run's"))
    if data is None:
        return None
    return [Sample(**s) for s in data["samples"]], data["per_token"], data["advantages"]


def save_ahead(out: Path, step: int, made: tuple[dict, tuple[list[Sample], list, list], list[Sample]]) -> None:
    """Keep the next round, sampled ahead (tinker.max_steps_off_policy), beside the state saved at `step`: its
    metrics, the batch it trains on and every sample. It is drawn on weights older than the state's, so without it a
    resumed run sampled that round on the resumed weights and left the uninterrupted run's path (issue 18)."""
    metrics, (kept, per_token, advantages), samples = made
    index = {id(s): i for i, s in enumerate(samples)}  # the kept samples are some of `samples`, as objects
    save_round_file(out, "ahead", step, {"metrics": metrics, "samples": [asdict(s) for s in samples],
                                         "kept": [index[id(s)] for s in kept], "per_token": per_token,
                                         "advantages": advantages})


def load_ahead(out: Path, step: int, noted: bool) -> Future | None:
    """What save_ahead kept for the state at `step`, as the finished prefetch the loop takes it from; None when the
    run dir does not have it (with a note when `noted`: the round is sampled on the resumed weights)."""
    data = load_round_file(out, "ahead", step, (
        "the next round sampled ahead",
        "it is sampled anew on the resumed weights, not on the uninterrupted run's older ones") if noted else None)
    if data is None:
        return None
    samples = [Sample(**s) for s in data["samples"]]
    done: Future = Future()
    done.set_result((data["metrics"], ([samples[i] for i in data["kept"]], data["per_token"], data["advantages"]),
                     samples))
    return done
