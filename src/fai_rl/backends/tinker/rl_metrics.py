"""What the Tinker RL driver logs so that a user can trust a run, under the local backend's (TRL's) names where it
has the same quantity.

  loss                 the service's loss per completion token (TRL's default dapo normalisation)
  kl_sample_train      sampler-vs-trainer drift as tinker-cookbook computes it (rl/metrics.compute_kl_sample_train):
                       mean over completion tokens of (sampler log-prob - trainer log-prob), the trainer's from
                       forward_backward's loss_fn_outputs; Tinker's guidance: stable below ~0.01
  kl_sample_train_v2   the same tokens' mean of 0.5 * (difference)^2
  entropy              -mean sampler log-prob of the sampled tokens (the cookbook's estimate). TRL's `entropy` is the
                       exact mean entropy of the full next-token distribution, which needs logits the service does
                       not return; both estimate the same per-token entropy
  advantages/mean|std  over the batch's completions; frac_reward_zero_std (TRL's name): groups whose rewards are all
                       equal, which carry no gradient
  tokens/prompt|completion   tokens of the step's batch sent to the trainer
  time/sample|score|train|wait   seconds of the step in each phase; wait: publishing new weights to the sampler

With several updates a step (num_iterations, PPO's epochs and mini-batches) the update's numbers are their mean.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager

from fai_rl.transcripts import PROMPTS_SHOWN


def sampler_drift(samples, trainer_logprobs: list[list[float]]) -> dict[str, float]:
    """kl_sample_train, kl_sample_train_v2 and entropy over the completion tokens of `samples` (rollouts.Sample),
    given each datum's per-target log-probs under the trainer (targets = tokens[1:], completion from len(prompt)-1)."""
    diffs, sampled = [], []
    for s, trainer in zip(samples, trainer_logprobs, strict=True):
        start = len(s.prompt) - 1
        new = trainer[start : start + len(s.completion)]
        diffs.extend(old - cur for old, cur in zip(s.logprobs, new, strict=True))
        sampled.extend(s.logprobs)
    if not diffs:
        return {}
    return {"kl_sample_train": statistics.fmean(diffs),
            "kl_sample_train_v2": 0.5 * statistics.fmean(d * d for d in diffs),
            "entropy": -statistics.fmean(sampled)}


def update_metrics(result, samples, trainer_logprobs: list[list[float]] | None = None) -> dict[str, float]:
    """loss, clip counters (the share of clipped ratios under TRL's name, clip_ratio/region_mean) and the drift of one
    forward_backward `result` on `samples`. The trainer's log-probs come from its loss_fn_outputs unless given (a custom
    loss sees them itself); a service that reports no loss:sum has it summed from elementwise_loss."""
    out = {("clip_ratio/region_mean" if k == "clip_ratio" else k): float(v)
           for k, v in (getattr(result, "metrics", None) or {}).items() if k.startswith("clip")}
    outputs = getattr(result, "loss_fn_outputs", None) or []
    tokens = max(1, sum(len(s.completion) for s in samples))
    metrics = getattr(result, "metrics", None) or {}
    if "loss:sum" in metrics:
        out["loss"] = float(metrics["loss:sum"]) / tokens
    elif outputs and all("elementwise_loss" in o for o in outputs):
        out["loss"] = sum(float(o["elementwise_loss"].to_torch().sum()) for o in outputs) / tokens
    if trainer_logprobs is None and outputs and all("logprobs" in o for o in outputs):
        trainer_logprobs = [o["logprobs"].to_torch().tolist() for o in outputs]
    if trainer_logprobs is not None:
        out.update(sampler_drift(samples, trainer_logprobs))
    return out


def mean_metrics(updates: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the updates that report it."""
    keys = dict.fromkeys(k for u in updates for k in u)
    return {k: statistics.fmean(u[k] for u in updates if k in u) for k in keys}


def batch_metrics(samples, advantages: list[float], per_prompt: int) -> dict[str, float]:
    """Advantage, group and token statistics of one sampled batch (groups of `per_prompt` consecutive samples)."""
    if not samples:
        return {}
    out = {"advantages/mean": statistics.fmean(advantages),
           "advantages/std": statistics.pstdev(advantages) if len(advantages) > 1 else 0.0,
           "tokens/prompt": float(sum(len(s.prompt) for s in samples)),
           "tokens/completion": float(sum(len(s.completion) for s in samples))}
    if per_prompt > 1:
        groups = [samples[i : i + per_prompt] for i in range(0, len(samples), per_prompt)]
        out["frac_reward_zero_std"] = sum(len({s.reward for s in g}) == 1 for g in groups) / len(groups)
    return {k: v for k, v in out.items() if not isinstance(v, float) or math.isfinite(v)}


@contextmanager
def timed(metrics: dict, phase: str):
    """Add the seconds spent in the block to metrics['time/<phase>']."""
    began = time.time()
    try:
        yield
    finally:
        key = f"time/{phase}"
        metrics[key] = metrics.get(key, 0.0) + time.time() - began


def drop_zero_variance(batch: tuple[list, list, list], per_prompt: int) -> tuple[tuple[list, list, list], int]:
    """training.drop_zero_variance_groups (DAPO's dynamic-sampling filter): the batch without the groups of
    `per_prompt` consecutive samples whose rewards are all equal, and how many groups were dropped."""
    samples, per_token, advantages = batch
    keep = [i for g in range(0, len(samples), per_prompt) if len({s.reward for s in samples[g : g + per_prompt]}) > 1
            for i in range(g, g + per_prompt)]
    kept = [samples[i] for i in keep], [per_token[i] for i in keep], [advantages[i] for i in keep]
    return kept, (len(samples) - len(keep)) // per_prompt


def transcript_rows(tokenizer, samples: list, advantages: list[float], per_prompt: int) -> list[dict]:
    """The first prompts of a batch (rollouts.Sample objects in groups of `per_prompt` consecutive samples) for fai_rl.transcripts: the prompt
    as the model saw it (chat template included), each completion, its reward and advantage."""
    shown = samples[: PROMPTS_SHOWN * per_prompt]
    prompts: dict[int, str] = {}
    return [{"group": i // per_prompt,
             "prompt": prompts.setdefault(i // per_prompt, tokenizer.decode(s.prompt)),
             "completion": s.text, "reward": s.reward, "advantage": a, "completion_tokens": len(s.completion),
             "stopped": s.stopped, "staleness": s.staleness}
            for i, (s, a) in enumerate(zip(shown, advantages, strict=False))]
