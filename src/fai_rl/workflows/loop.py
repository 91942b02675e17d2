"""The pieces of a workflow training loop that do not depend on the backend: the metrics of its episodes and the
held-out evaluation logged as eval_* (fai_rl.backends.local.workflow, .tinker.workflow). Which tasks a step runs is
fai_rl.schedule's.
"""

from __future__ import annotations

from fai_rl.config.schema import Recipe
from fai_rl.workflows.base import run_workflow
from fai_rl.workflows.evaluate import summarize_episodes


def rollout_metrics(episodes) -> dict[str, float]:
    """Mean reward per role and the workflow's own episode metrics (solver_acc, judge_acc, ...); truncated_* are
    counts (prompts cut to data.max_length, tokens dropped), summed over the step's episodes."""
    out: dict[str, list[float]] = {}
    for e in episodes:
        for t in e.trajectories:
            out.setdefault(f"reward/{t.name}", []).append(t.reward)
        for key, value in e.metrics.items():
            out.setdefault(key, []).append(value)
    return {k: sum(v) if k.startswith("truncated_") else sum(v) / len(v) for k, v in out.items()}


def report_truncations(workflow) -> None:
    """The run's one line on the prompts a built-in workflow cut to data.max_length (fai_rl.data.truncation);
    nothing when none was cut. A workflow of your own that cuts counts in its own episodes' truncated_* metrics."""
    cuts = getattr(workflow, "cuts", None)
    if cuts is not None:
        cuts.run.report("prompts the workflow rendered (train and eval)")


def evaluate(workflow, sampler, rows: list[dict], recipe: Recipe) -> dict[str, float]:
    """eval_*: evaluate_workflow's metrics on the held-out tasks, num_generations_eval episodes each (k the same)."""
    t = recipe.training
    k = t.num_generations_eval
    ran = run_workflow(workflow, [row for row in rows for _ in range(k)], sampler)
    metrics = summarize_episodes([ran[i * k : (i + 1) * k] for i in range(len(rows))], k)
    return {f"eval_{key}": value for key, value in metrics.items()}
