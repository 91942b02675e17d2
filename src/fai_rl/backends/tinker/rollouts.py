"""Sampling, scoring and RL datums shared by GRPO/GSPO and PPO on the Tinker backend.

The service samples (SamplingClient) and reports each sampled token's log-probability under the weights that
sampled it; those are the "old" log-probs of the importance ratio. Rewards are scored here, with the same reward
functions as the local backend (fai_rl.rewards), so a recipe's rewards mean the same thing on both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fai_rl.backends.tinker.common import TinkerResume, TinkerSession, check_api_key, datum, find_tinker_resume
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import load_prompt_rows, render_prompts
from fai_rl.models.load import load_tokenizer
from fai_rl.sampling import sample_tinker, stop_token_ids


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
    lengths = [len(prompt_ids(tok, row, recipe)) for row in p.train]
    lines = [
        f"prompts: {len(p.train)} train, {len(p.eval)} eval; prompt tokens min {min(lengths)} max {max(lengths)}",
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


def prompt_ids(tokenizer, row: dict, recipe: Recipe) -> list[int]:
    return render_prompts(tokenizer, [row], recipe.data.max_length)[0]


@dataclass
class Sample:
    row: dict
    prompt: list[int]
    completion: list[int]  # as sampled, including the end-of-turn token when the model stopped
    logprobs: list[float]  # the sampler's log-prob of each completion token
    text: str
    stopped: bool  # ended with an end-of-turn token (else cut at max_completion_length)
    reward: float = 0.0

    def tokens(self) -> list[int]:
        return self.prompt + self.completion


def sample(session: TinkerSession, sampler, rows: list[dict], per_prompt: int, prepared: PreparedRL,
           recipe: Recipe, what: str) -> list[Sample]:
    """`per_prompt` completions of each row, grouped consecutively; all requests are sent before any is awaited."""
    tinker, t, tok = session.tinker, recipe.training, prepared.tokenizer
    params = tinker.SamplingParams(max_tokens=t.max_completion_length, temperature=t.temperature, top_p=t.top_p,
                                   stop=stop_token_ids(tok))
    prompts = [prompt_ids(tok, row, recipe) for row in rows]
    groups = sample_tinker(sampler, tinker, tok, prompts, per_prompt, params, session.wait, what)
    return [Sample(row, ids, c.tokens, c.logprobs, c.text, c.stopped)
            for row, ids, group in zip(rows, prompts, groups, strict=True) for c in group]


def score(samples: list[Sample], prepared: PreparedRL, recipe: Recipe) -> dict[str, float]:
    """Set each sample's reward (weighted total, minus missing_eos_penalty); the batch means by reward function."""
    from fai_rl.rewards import score_rewards

    rows = [s.row for s in samples]
    totals, per_fn = score_rewards(prepared.rewards, [r["prompt"] for r in rows], [s.text for s in samples], rows)
    penalty = recipe.training.missing_eos_penalty
    for s, total in zip(samples, totals, strict=True):
        s.reward = total - (penalty if penalty is not None and not s.stopped else 0.0)
    metrics = {"reward": sum(s.reward for s in samples) / len(samples),
               "completion_length": sum(len(s.completion) for s in samples) / len(samples)}
    for name, scores in per_fn.items():
        given = [x for x in scores if x is not None]
        metrics[f"rewards/{name}/mean"] = sum(given) / len(given) if given else math.nan
    return metrics


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
    per_prompt = t.num_generations_eval or (t.num_generations if t.algorithm in ("grpo", "gspo") else 1)
    samples = sample(session, sampler, prepared.eval, per_prompt, prepared, recipe, f"evaluation at step {step}")
    metrics = score(samples, prepared, recipe)
    return {"eval_reward": metrics["reward"]}
