"""GRPO / GSPO over multi-step workflows on the Tinker backend: episodes sampled through the SamplingClient, the
update through the same loss path as plain GRPO (fai_rl.backends.tinker.grpo.update_policy).

The loop is fai_rl.backends.local.workflow's (rLLM-style workflows, grouped per trajectory or step, GRPO advantages;
see its docstring and docs/workflows.md) with the Tinker pieces of tinker/grpo.py: every step samples through a
sampler on the current weights (fai_rl.workflows.samplers.TinkerSampler, all requests in flight at once), each step of
each trajectory becomes one datum of the service's `importance_sampling` (or `ppo`) loss with its advantage on every
completion token (rollouts.rl_datum), GSPO (importance_sampling_level: sequence) goes through forward_backward_custom, and forward_backward + optim_step are
submitted before either is awaited.

tinker.max_steps_off_policy: 1 runs step N+1's workflows in a thread on the weights before step N's update while that
update runs on the service; each sample's staleness is recorded (off_policy_steps, transcripts) and corrected by the
importance ratio to the sampler's log-probs that the loss already uses. Those episodes are run on weights no state
holds, so they are kept beside each state (tinker_rounds/ahead-N.json) and taken on --resume, as the RL driver does.

Departures: no KL term (training.beta must be 0 with a workflow); evaluation is evaluate_workflow's pass@k metrics on
the held-out tasks rather than eval_reward.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from fai_rl.transcripts import due, first_groups, write_transcript
from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker.common import (
    StepLog,
    TinkerResume,
    TinkerSession,
    check_api_key,
    find_tinker_resume,
    load_round_file,
    save_round_file,
    write_summary,
)
from fai_rl.backends.tinker.grpo import update_policy
from fai_rl.backends.tinker.rl_metrics import batch_metrics, timed
from fai_rl.backends.tinker.rollouts import Sample
from fai_rl.config.schema import Recipe
from fai_rl.data.truncation import Truncations
from fai_rl.models.load import load_tokenizer
from fai_rl.progress import stop_requested
from fai_rl.schedule import Schedule
from fai_rl.workflows import Episode, Step, Trajectory, build_workflow, reward_scorer, run_workflow, step_advantages
from fai_rl.workflows.grouping import drop_flat_groups
from fai_rl.workflows.data import describe_workflow, load_workflow_rows
from fai_rl.workflows.loop import evaluate, report_truncations, rollout_metrics
from fai_rl.workflows.samplers import TinkerSampler

HEADLINE = ("reward/solver", "reward/judge", "judge_acc", "eval_solver_pass@1", "eval_judge_accuracy", "step_time_s")


@dataclass
class PreparedTinkerWorkflow:
    tokenizer: object
    train: list[dict]
    eval: list[dict]
    rewards: list
    workflow: object
    resume: TinkerResume | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedTinkerWorkflow:
    """API key, tokenizer, task rows, rewards, the workflow and the resume point; nothing written, no service call."""
    from fai_rl.rewards import recipe_rewards

    check_api_key()
    resume_point = find_tinker_resume(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_workflow_rows(recipe)
    rewards = recipe_rewards(recipe)
    workflow = build_workflow(recipe, reward_scorer(rewards))
    return PreparedTinkerWorkflow(tokenizer, train, evaluation, rewards, workflow, resume_point)


def describe(recipe: Recipe, prepared: PreparedTinkerWorkflow) -> str:
    text = describe_workflow(recipe, prepared.tokenizer, prepared.train, prepared.eval, prepared.rewards)
    text += f"\nLoRA rank {recipe.tinker.lora_rank} on the service; loss {recipe.tinker.rl_loss}"
    if prepared.resume is not None:
        text += f"\nresume: from {prepared.resume.path} (step {prepared.resume.step})"
    return text


def as_samples(scored, sampled_at: int = 0, step: int = 0) -> tuple[list[Sample], list[list[float]]]:
    """The scored steps as tinker/grpo's samples, with each advantage on every completion token; sampled on weights
    after `sampled_at` updates and trained at optimizer step `step` (their staleness: the difference)."""
    samples = [Sample(None, s.step.prompt_tokens, s.step.completion_tokens, s.step.logprobs, s.step.text,
                      s.step.stopped, s.step.reward, sampled_at, step - sampled_at) for s in scored]
    return samples, [[s.advantage] * len(s.step.completion_tokens) for s in scored]


def transcript_rows(tokenizer, scored, staleness: int = 0) -> list[dict]:
    """The steps of the first prompts (grouped by prompt, in order) for fai_rl.transcripts, with their roles."""
    prompts = [tokenizer.decode(s.step.prompt_tokens) for s in scored]
    return [{"group": g, "role": s.role, "prompt": p, "completion": s.step.text, "reward": s.step.reward,
             "advantage": s.advantage, "completion_tokens": len(s.step.completion_tokens), "staleness": staleness}
            for s, p, g in zip(scored, prompts, first_groups(prompts), strict=True) if g >= 0]


def train(recipe: Recipe, prepared: PreparedTinkerWorkflow, run: RunDir) -> dict:
    t, w = recipe.training, recipe.workflow
    schedule = Schedule(recipe, len(prepared.train))  # the local workflow loop's steps, task order and learning rate
    total, per_step = schedule.total, schedule.batch
    start = prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume, schedule)
    log = StepLog(run, total, HEADLINE)
    save_every = recipe.tinker.save_every
    print(f"workflow {w.type} with {t.algorithm} on Tinker: {per_step} tasks x {t.num_generations} episodes per "
          f"step, grouping {w.grouping}", flush=True)
    began, ok = time.time(), False
    generated = session.counters.get("generated_tokens", 0)  # a resumed run goes on counting (saved with each state)
    cuts = getattr(prepared.workflow, "cuts", None)  # a built-in workflow's prompts cut to data.max_length
    if cuts is not None:
        cuts.run.add(Truncations("prompt", None, **session.counters.get("prompt_cuts", {})))

    def episodes_of(step: int, client, version: int) -> tuple[dict, list, int]:
        """Run step `step`'s workflows on `client` (weights after `version` updates), through a sampler of its own
        (a prefetch runs beside the main thread's evaluation), seeded so a resumed run draws what this one drew."""
        metrics: dict = {}
        tasks = [prepared.train[i] for i in schedule.rows(step)]
        mine = TinkerSampler(client, prepared.tokenizer, session.tinker, session.wait,
                             max_tokens=t.max_completion_length, temperature=t.temperature, top_p=t.top_p)
        mine.reseed(f"{t.seed}:sampling at step {step + 1}")
        with timed(metrics, "sample"):  # the workflow scores its episodes as it runs them
            episodes = run_workflow(prepared.workflow, [row for row in tasks for _ in range(t.num_generations)], mine)
        return metrics, episodes, version

    # tinker.max_steps_off_policy: 1 runs the next step's workflows in a thread, on the weights before this step's
    # update, while the update runs on the service (as the RL driver does; fai_rl.backends.tinker.rollouts)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fai-rl-workflows") if recipe.tinker.max_steps_off_policy else None
    prefetched, version = None, start  # version: optimizer steps in `sampler`'s weights
    try:
        sampler = TinkerSampler(session.sampling_client(f"sampler-{start:06d}"), prepared.tokenizer, session.tinker,
                                session.wait, max_tokens=t.max_completion_length, temperature=t.temperature,
                                top_p=t.top_p)
        if start == 0 and prepared.eval:
            sampler.reseed(f"{t.seed}:evaluation at step 0")
            log(0, evaluate(prepared.workflow, sampler, prepared.eval, recipe))
        for step in range(start, total):
            step_began = time.time()
            if step == start and start and pool is not None:  # resumed: the episodes run ahead of the state
                prefetched = load_ahead(run.path, start)
            made, episodes, sampled_at = (prefetched.result() if prefetched is not None
                                          else episodes_of(step, sampler.client, version))
            prefetched, metrics = None, dict(made)
            if pool is not None and step + 1 < total:  # one step stale when it trains
                prefetched = pool.submit(episodes_of, step + 1, sampler.client, version)
            scored = step_advantages(episodes, [i // t.num_generations for i in range(len(episodes))], w.grouping,
                                     w.norm_adv_by_std)
            generated += sum(len(s.step.completion_tokens) for s in scored)
            session.counters["generated_tokens"] = generated
            metrics.update(rollout_metrics(episodes), learning_rate=schedule.learning_rate(step))
            metrics["off_policy_steps"] = float(step - sampled_at)  # every sample of the step has this staleness
            samples, per_token = as_samples(scored, sampled_at, step)
            metrics.update(batch_metrics(samples, [s.advantage for s in scored], per_prompt=1))
            if t.drop_zero_variance_groups:  # DAPO's filter: groups whose rewards are all equal teach nothing
                kept, metrics["groups_dropped"] = drop_flat_groups(scored)
                samples, per_token = as_samples(kept, sampled_at, step)
            # num_iterations updates at this step's learning rate, as the local workflow loop makes them
            if samples:  # every group dropped: no update this step
                with timed(metrics, "train"):
                    metrics.update(update_policy(session, recipe, samples, per_token, step, t.num_iterations))
            done = step + 1
            if due(done, t.log_rollouts_every):
                write_transcript(run.path, done, transcript_rows(prepared.tokenizer, scored, step - sampled_at))
            with timed(metrics, "wait"):
                sampler.client = session.sampling_client(f"sampler-{done:06d}")
                version = done
            metrics["step_time_s"] = time.time() - step_began
            log(done, metrics)
            if prepared.eval and t.eval_steps and done % t.eval_steps == 0 and done != total:
                sampler.reseed(f"{t.seed}:evaluation at step {done}")
                log(done, evaluate(prepared.workflow, sampler, prepared.eval, recipe))
            if prefetched is not None and done < total and (done % save_every == 0 or stop_requested(run.path)):
                save_ahead(run.path, done, prefetched.result())  # before the state that needs it
            if cuts is not None:  # saved with the next state (the episodes run ahead awaited above), theirs included
                session.counters["prompt_cuts"] = {"seen": cuts.run.seen, "rows": cuts.run.rows,
                                                   "tokens": cuts.run.tokens}
            if done % save_every == 0 and done != total:
                session.save_state(done)
            session.stop_if_asked(done, total)  # fai-rl-runs stop: state saved, RunStopped
        if prepared.eval:
            sampler.reseed(f"{t.seed}:evaluation at step {total}")
            log(total, evaluate(prepared.workflow, sampler, prepared.eval, recipe))
        report_truncations(prepared.workflow)  # one line when a prompt was cut to data.max_length
        runtime = time.time() - began
        final = session.finish(total, prepared.tokenizer)
        ok = True
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        session.close(ok)
    cut_totals = {"truncated_prompts": cuts.run.rows, "truncated_prompt_tokens": cuts.run.tokens} if cuts else {}
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "generated_tokens", generated,
                         workflow=w.type, **cut_totals)


def save_ahead(out: Path, step: int, made: tuple[dict, list[Episode], int]) -> None:
    """Keep the next step's episodes, run ahead (tinker.max_steps_off_policy) on weights older than the state saved at
    `step`, beside that state: their metrics, the episodes and the optimizer steps of their weights. Without them a
    resumed run ran that step on-policy on the resumed weights and left the uninterrupted run's path (issue 18)."""
    metrics, episodes, sampled_at = made
    save_round_file(out, "ahead", step, {"metrics": metrics, "episodes": [asdict(e) for e in episodes],
                                         "sampled_at": sampled_at})


def load_ahead(out: Path, step: int) -> Future | None:
    """What save_ahead kept for the state at `step`, as the finished prefetch the loop takes it from; None (with a
    note) when the run dir does not have it."""
    data = load_round_file(out, "ahead", step, (
        "the next step's episodes run ahead",
        "they are run anew on the resumed weights, not on the uninterrupted run's older ones"))
    if data is None:
        return None
    episodes = [Episode([Trajectory(t["name"], [Step(**s) for s in t["steps"]], t["reward"], t["correct"])
                         for t in e["trajectories"]], e["metrics"]) for e in data["episodes"]]
    done: Future = Future()
    done.set_result((data["metrics"], episodes, data["sampled_at"]))
    return done
