"""Supervised fine-tuning and CPT on the Tinker backend: the service's `cross_entropy` loss with per-token weights.

The data are tokenised and masked exactly as on the local backend (fai_rl.data.tokenize), so `--dry-run` shows the
same `[[loss-carrying]]` text; a token's weight is 1 where the local labels carry the loss and 0 elsewhere. The loss
logged is the mean negative log-likelihood per weighted token, as the local backend reports it. CPT trains the same
way on max_length blocks of packed raw text, every token weighted 1 (fai_rl.data.prepare.prepare_cpt_data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker.pipeline import pipelined
from fai_rl.backends.tinker.common import (
    StepLog,
    TinkerResume,
    TinkerSession,
    check_api_key,
    datum,
    find_tinker_resume,
    target_logprobs,
    write_summary,
)
from fai_rl.config.schema import Recipe
from fai_rl.data.prepare import SFTData, prepare_data
from fai_rl.data.tokenize import IGNORE, Tokenized
from fai_rl.models.load import load_tokenizer
from fai_rl.progress import stop_requested
from fai_rl.schedule import Schedule

HEADLINE = ("loss", "eval_loss", "learning_rate")


@dataclass
class PreparedSFT:
    tokenizer: object
    data: SFTData
    resume: TinkerResume | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedSFT:
    """API key, tokenizer, tokenised data and the resume point; nothing is written and the service is not called."""
    check_api_key()
    resume_point = find_tinker_resume(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    return PreparedSFT(tokenizer, prepare_data(recipe, tokenizer), resume_point)


def describe(recipe: Recipe, prepared: PreparedSFT) -> str:
    from fai_rl.backends.local.sft import describe as describe_local

    k = recipe.tinker
    return describe_local(recipe, prepared) + (
        f"\ntinker: LoRA rank {k.lora_rank} on {recipe.model.base_model_name}; loss cross_entropy with the weights "
        f"above; state saved every {k.save_every} steps and at the end"
    )


def to_datum(tinker, example: Tokenized):
    weights = [0.0 if label == IGNORE else 1.0 for label in example.labels[1:]]
    return datum(tinker, example.input_ids, weights=weights)


def mean_nll(output, batch: list[Tokenized]) -> tuple[float, int]:
    """(mean NLL per weighted token, weighted tokens) from a forward output's per-token logprobs."""
    total, count = 0.0, 0
    for i, example in enumerate(batch):
        for lp, label in zip(target_logprobs(output, i), example.labels[1:], strict=True):
            if label != IGNORE:
                total -= lp
                count += 1
    return total / max(1, count), count


def train(recipe: Recipe, prepared: PreparedSFT, run: RunDir) -> dict:
    t, data = recipe.training, prepared.data
    schedule = Schedule(recipe, len(data.train))  # HF Trainer's step count, per-epoch row order and learning rate
    total = schedule.total
    start = prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume, schedule)
    tinker = session.tinker
    log = StepLog(run, total, HEADLINE)
    save_every = recipe.tinker.save_every
    for note in data.notes:
        print(f"data: {note}", flush=True)
    if start == 0 and data.truncations is not None and data.truncations.rows:  # said in the notes above
        log(0, data.truncations.metrics())
    if recipe.rewards:  # the local backend scores greedy held-out replies with them at each evaluation
        print("tinker: rewards are not scored during SFT on the Tinker backend (eval_loss only); score the run "
              "afterwards with fai-rl-eval, which samples its tinker:// sampler weights", flush=True)

    def evaluate(step: int) -> None:
        if not data.eval:
            return
        nll, tokens = 0.0, 0
        for i in range(0, len(data.eval), t.per_device_eval_batch_size):
            chunk = data.eval[i : i + t.per_device_eval_batch_size]
            out = session.wait(session.training.forward([to_datum(tinker, e) for e in chunk], "cross_entropy"),
                               f"evaluating at step {step}")
            mean, n = mean_nll(out, chunk)
            nll, tokens = nll + mean * n, tokens + n
        log(step, {"eval_loss": nll / max(1, tokens)})

    began, trained_tokens, step = time.time(), 0, start
    before = session.counters.get("num_tokens", 0)  # a resumed run goes on counting (saved with each state)
    ok = False
    try:
        if start == 0:
            evaluate(0)
        def submit(step: int):
            examples = [data.train[i] for i in schedule.rows(step)]
            fb = session.training.forward_backward([to_datum(tinker, e) for e in examples], "cross_entropy")
            return examples, fb, session.training.optim_step(session.adam(step))

        def may_queue(done: int) -> bool:  # nothing after step `done` needs its weights: queue the next step
            return (not (t.eval_steps and done % t.eval_steps == 0) and done % save_every != 0
                    and not stop_requested(run.path))

        step_began = time.time()
        for step, (examples, fb, opt), queued in pipelined(start, total, submit, may_queue):
            out = session.wait(fb, f"forward_backward at step {step + 1}")
            session.wait(opt, f"optim_step at step {step + 1}")
            loss, n = mean_nll(out, examples)
            trained_tokens += sum(len(e.input_ids) for e in examples)
            session.counters["num_tokens"] = before + trained_tokens
            done = step + 1
            if done % t.logging_steps == 0 or done == total or done == start + 1:
                log(done, {"loss": loss, "learning_rate": schedule.learning_rate(step), "epoch": schedule.epoch(step),
                           "num_tokens": before + trained_tokens, "loss_tokens": n,
                           "step_time_s": time.time() - step_began,
                           "queued_ahead": float(queued)})
            if t.eval_steps and done % t.eval_steps == 0 and done != total:
                evaluate(done)
            if done % save_every == 0 and done != total:
                session.save_state(done)
            if not queued:  # with the next step in flight a state saved now would not be step `done`'s
                session.stop_if_asked(done, total)  # fai-rl-runs stop: state saved, RunStopped
            step_began = time.time()
        step = total
        evaluate(total)
        runtime = time.time() - began
        final = session.finish(total, prepared.tokenizer)
        ok = True
    finally:
        session.close(ok)
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "train_tokens", trained_tokens)
