"""Direct Preference Optimization on the Tinker backend: reference log-probs from a sampler, the loss computed here.

DPO (Rafailov et al., 2023) compares the policy's log-ratio of chosen over rejected against a frozen reference. On
Tinker the reference is a sampler on the start: the base model (a fresh LoRA is the base), or with model.init_from
the loaded weights saved before any update; queried once per pair with `compute_logprobs`; the policy's log-probs come from `forward_backward_custom`,
which hands our loss (fai_rl.rl_math.dpo_losses: sigmoid with label smoothing, hinge, ipo, sft) the per-token
log-probs and sends its gradient back. Held-out pairs are scored with `forward` for eval_rewards/accuracies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fai_rl.artifacts import RunDir
from fai_rl.backends.tinker.pipeline import pipelined
from fai_rl.backends.tinker.common import (
    StepLog,
    TinkerResume,
    TinkerSession,
    base_model,
    check_api_key,
    datum,
    find_tinker_resume,
    write_summary,
)
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import load_preference_rows
from fai_rl.data.truncation import Truncations
from fai_rl.models.load import load_tokenizer
from fai_rl.progress import stop_requested
from fai_rl.rl_math import dpo_losses
from fai_rl.schedule import Schedule

HEADLINE = ("loss", "eval_loss", "rewards/accuracies", "rewards/margins", "eval_rewards/accuracies",
            "eval_rewards/margins")


@dataclass
class Pair:
    """One preference pair as token ids: the shared prompt, then each reply (with its end-of-turn token)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass
class PreparedDPO:
    tokenizer: object
    train: list[Pair]
    eval: list[Pair]
    rows: list[dict]  # the first train rows, for --dry-run
    resume: TinkerResume | None
    truncations: Truncations  # pairs cut to data.max_length (train and eval): said at the start, logged at step 0


def prepare(recipe: Recipe, resume: str | None) -> PreparedDPO:
    check_api_key()
    resume_point = find_tinker_resume(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_preference_rows(recipe)
    cuts = Truncations("pair", recipe.data.max_length, side="right of each reply (a prompt over it keeps its end)")
    to_pair = _pair_tokens(tokenizer, recipe.data.max_length, cuts)
    return PreparedDPO(tokenizer, [to_pair(r) for r in train], [to_pair(r) for r in evaluation], train[:2],
                       resume_point, cuts)


def _pair_tokens(tokenizer, max_length: int, cuts: Truncations):
    """Each sequence (prompt + one reply) within max_length: the prompt keeps its last max_length - 1 tokens, each
    reply at least its first token; what is cut is counted into `cuts` (both sequences' tokens)."""
    def render(messages, generation_prompt=False):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                             return_dict=True)["input_ids"]

    def to_pair(row: dict) -> Pair:
        prompt = render(row["prompt"], generation_prompt=True)
        replies, whole = [], 0
        for side in ("chosen", "rejected"):
            full = render(row["prompt"] + row[side])
            reply = full[len(prompt) :] if full[: len(prompt)] == prompt else full[len(prompt) :]
            whole += len(prompt) + len(reply)
            replies.append(reply[: max(1, max_length - len(prompt))])
        pair = Pair(prompt[-(max_length - 1) :], *replies)
        cuts.count(whole, 2 * len(pair.prompt) + len(pair.chosen) + len(pair.rejected))
        return pair

    return to_pair


def describe(recipe: Recipe, prepared: PreparedDPO) -> str:
    t, tok = recipe.training, prepared.tokenizer
    lines = [f"train: {len(prepared.train)} pairs; eval: {len(prepared.eval)} pairs",
             f"loss: {' + '.join(t.dpo_loss_type)} with beta {t.beta}; reference: "
             f"{'the model.init_from weights' if recipe.model.init_from else 'the base model'} on the service; "
             f"LoRA rank {recipe.tinker.lora_rank}"]
    for n, pair in enumerate(prepared.train[:2], start=1):
        lines.append(f"--- pair {n}: prompt {tok.decode(pair.prompt)!r}")
        lines.append(f"    chosen {tok.decode(pair.chosen)!r}  rejected {tok.decode(pair.rejected)!r}")
    if prepared.resume is not None:
        lines.append(f"resume: from {prepared.resume.path} (step {prepared.resume.step})")
    return "\n".join(lines)


def _data(tinker, pairs: list[Pair]):
    """Two datums per pair (chosen, rejected), weights 1 on the reply's targets."""
    out = []
    for p in pairs:
        for reply in (p.chosen, p.rejected):
            out.append(datum(tinker, p.prompt + reply, weights=[0.0] * (len(p.prompt) - 1) + [1.0] * len(reply)))
    return out


def _reply_logps(logprobs_t: torch.Tensor, pair: Pair, reply: list[int]) -> torch.Tensor:
    start = len(pair.prompt) - 1
    return logprobs_t[start : start + len(reply)].sum()


def _reference(session: TinkerSession, reference, pairs: list[Pair], cache: dict) -> dict[int, tuple[float, float]]:
    """Summed reference log-probs of (chosen, rejected) by pair id, for the pairs not yet in `cache`.

    Asked for lazily, batch by batch (a pair is scored once), with every request sent before any is awaited.
    """
    tinker = session.tinker
    todo = [p for p in pairs if id(p) not in cache]
    futures = [(reference.compute_logprobs(tinker.ModelInput.from_ints(p.prompt + p.chosen)),
                reference.compute_logprobs(tinker.ModelInput.from_ints(p.prompt + p.rejected))) for p in todo]
    for p, (fc, fr) in zip(todo, futures, strict=True):
        chosen = session.wait(fc, "reference log-probs")[len(p.prompt) :]
        rejected = session.wait(fr, "reference log-probs")[len(p.prompt) :]
        cache[id(p)] = (sum(float(x) for x in chosen), sum(float(x) for x in rejected))
    return cache


def _loss(recipe: Recipe, pairs: list[Pair], ref: dict, logps_list: list[torch.Tensor]):
    t = recipe.training
    chosen = torch.stack([_reply_logps(logps_list[2 * i], p, p.chosen) for i, p in enumerate(pairs)])
    rejected = torch.stack([_reply_logps(logps_list[2 * i + 1], p, p.rejected) for i, p in enumerate(pairs)])
    ref_c = torch.tensor([ref[id(p)][0] for p in pairs])
    ref_r = torch.tensor([ref[id(p)][1] for p in pairs])
    loss, metrics = dpo_losses(chosen, rejected, ref_c, ref_r, beta=t.beta, loss_types=list(t.dpo_loss_type),
                               loss_weights=t.dpo_loss_weights, label_smoothing=t.label_smoothing,
                               chosen_lengths_b=torch.tensor([float(len(p.chosen)) for p in pairs]))
    # TRL's DPOTrainer names: the batch mean of each reply's summed log-probability under the policy
    metrics.update({"logps/chosen": chosen.detach().mean().item(), "logps/rejected": rejected.detach().mean().item()})
    return loss, metrics


def train(recipe: Recipe, prepared: PreparedDPO, run: RunDir) -> dict:
    t = recipe.training
    schedule = Schedule(recipe, len(prepared.train))  # HF Trainer's step count, per-epoch row order and learning rate
    total = schedule.total
    start = prepared.resume.step if prepared.resume else 0
    session = TinkerSession(recipe, run, prepared.resume, schedule)
    tinker, log = session.tinker, StepLog(run, total, HEADLINE)
    save_every = recipe.tinker.save_every
    began, tokens = time.time(), 0
    prepared.truncations.report("preference pairs (train and eval)")
    if start == 0 and prepared.truncations.rows:
        log(0, prepared.truncations.metrics())
    before = session.counters.get("num_tokens", 0)  # a resumed run goes on counting (saved with each state)
    ok = False
    try:
        # The reference: the start. A fresh LoRA (B = 0) is the base model itself, so the base sampler serves it,
        # the same before and after a --resume; with model.init_from, a sampler saved on the loaded weights before
        # any update (recorded in checkpoints.json, reused on --resume). Not a sampler on the training client's
        # weights at step 0: the local skyrl-tx server ties such a sampler to the live weights (measured: its
        # log-probs moved by 11 nats after 3 steps), so the "frozen" reference drifted with the policy there.
        if recipe.model.init_from:
            reference = session.init_reference(start)
        else:
            reference = session.wait(session.service.create_sampling_client(base_model=base_model(recipe)),
                                     "creating the reference sampler (base weights)")
        ref: dict[int, tuple[float, float]] = {}

        def evaluate(step: int) -> None:
            if not prepared.eval:
                return
            rows, losses = [], []
            for i in range(0, len(prepared.eval), t.per_device_eval_batch_size):
                chunk = prepared.eval[i : i + t.per_device_eval_batch_size]
                _reference(session, reference, chunk, ref)
                out = session.wait(session.training.forward(_data(tinker, chunk), "cross_entropy"),
                                   f"evaluating at step {step}")
                logps = [o["logprobs"].to_torch() for o in out.loss_fn_outputs]
                loss, metrics = _loss(recipe, chunk, ref, logps)
                rows.append((len(chunk), metrics))
                losses.append(loss.item() * len(chunk))
            n = sum(size for size, _ in rows)
            merged = {f"eval_{k}": sum(size * m[k] for size, m in rows) / n for k in rows[0][1]}
            log(step, {"eval_loss": sum(losses) / n, **merged})

        if start == 0:
            evaluate(0)
        def submit(step: int):
            picked = [prepared.train[i] for i in schedule.rows(step)]
            _reference(session, reference, picked, ref)  # while the step before trains on the service
            seen: dict = {}

            def loss_fn(data, logps_list, pairs=picked, seen=seen):
                loss, metrics = _loss(recipe, pairs, ref, list(logps_list))
                seen.update(metrics, loss=loss.item())
                return loss, metrics

            fb = session.training.forward_backward_custom(_data(tinker, picked), loss_fn)
            return picked, seen, fb, session.training.optim_step(session.adam(step))

        def may_queue(done: int) -> bool:  # nothing after step `done` needs its weights: queue the next step
            return (not (t.eval_steps and done % t.eval_steps == 0) and done % save_every != 0
                    and not stop_requested(run.path))

        step_began = time.time()
        for step, (picked, seen, fb, opt), queued in pipelined(start, total, submit, may_queue):
            session.wait(fb, f"forward_backward at step {step + 1}")
            session.wait(opt, f"optim_step at step {step + 1}")
            tokens += sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in picked)
            session.counters["num_tokens"] = before + tokens
            done = step + 1
            if done % t.logging_steps == 0 or done == total or done == start + 1:
                log(done, {**seen, "learning_rate": schedule.learning_rate(step), "epoch": schedule.epoch(step),
                           "num_tokens": before + tokens, "step_time_s": time.time() - step_began,
                           "queued_ahead": float(queued)})
            if t.eval_steps and done % t.eval_steps == 0 and done != total:
                evaluate(done)
            if done % save_every == 0 and done != total:
                session.save_state(done)
            if not queued:  # with the next step in flight a state saved now would not be step `done`'s
                session.stop_if_asked(done, total)  # fai-rl-runs stop: state saved, RunStopped
            step_began = time.time()
        evaluate(total)
        runtime = time.time() - began
        final = session.finish(total, prepared.tokenizer)
        ok = True
    finally:
        session.close(ok)
    return write_summary(run, recipe, prepared.resume, session, total, runtime, final, "train_tokens", tokens)

