"""The pieces of a workflow training loop that do not depend on the backend: the metrics of its episodes and the
held-out evaluation logged as eval_* (fai_rl.backends.local.workflow, .tinker.workflow). Which tasks a step runs is
fai_rl.schedule's.
"""

from __future__ import annotations

from fai_rl.config.schema import Recipe
from fai_rl.workflows.base import run_workflow
from fai_rl.workflows.evaluate import summarize_episodes


def rollout_metrics(episodes) -> dict[str, float]:
    """Mean reward per role and the workflow's own episode metrics (solver_acc, judge_acc, ...)."""
    out: dict[str, list[float]] = {}
    for e in episodes:
        for t in e.trajectories:
            out.setdefault(f"reward/{t.name}", []).append(t.reward)
        for key, value in e.metrics.items():
            out.setdefault(key, []).append(value)
    return {k: sum(v) / len(v) for k, v in out.items()}


def evaluate(workflow, sampler, rows: list[dict], recipe: Recipe) -> dict[str, float]:
    """eval_*: evaluate_workflow's metrics on the held-out tasks, num_generations_eval episodes each (k the same)."""
    t = recipe.training
    k = t.num_generations_eval
    ran = run_workflow(workflow, [row for row in rows for _ in range(k)], sampler)
    metrics = summarize_episodes([ran[i * k : (i + 1) * k] for i in range(len(rows))], k)
    return {f"eval_{key}": value for key, value in metrics.items()}
