"""Evaluating a workflow: pass@1 and pass@k of the solver alone and of solver + judge, and the judge's accuracy.

Each task row is run `episodes` times. The solver alone: every solver trajectory is one sample (c correct out of n
per task), pass@k by the unbiased estimator 1 - C(n-c, k) / C(n, k) (fai_rl.stats.pass_at_k), averaged over tasks.
Solver + judge: the answer of an episode is the solution its judge picked, so each episode is one sample.
judge_accuracy counts only the episodes where the judge could be right (at least one correct candidate);
judge_accuracy_mixed only those with both right and wrong candidates, where picking is a real choice.

This module only runs and counts; evaluate_recipe, which builds everything from a recipe, is in recipe_eval.
"""

from __future__ import annotations

from fai_rl.stats import pass_at_k
from fai_rl.workflows.base import Episode, Sampler, run_workflow


def evaluate_workflow(workflow, sampler: Sampler, rows: list[dict], k: int = 4, episodes: int | None = None,
                      batch_rows: int = 64) -> dict[str, float]:
    """Metrics of `workflow` on `rows` (each run `episodes` times, default k): solver_pass@1, solver_pass@k,
    judge_pass@1 and judge_pass@k (solver + judge), judge_accuracy, judge_accuracy_mixed, reward/<role>."""
    episodes = episodes or k
    by_task: list[list[Episode]] = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        ran = run_workflow(workflow, [row for row in chunk for _ in range(episodes)], sampler)
        by_task += [ran[i * episodes : (i + 1) * episodes] for i in range(len(chunk))]
    return summarize_episodes(by_task, k)


def summarize_episodes(by_task: list[list[Episode]], k: int) -> dict[str, float]:
    """The metrics of evaluate_workflow from episodes already run, grouped by task."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for task in by_task:
        solvers = [t for e in task for t in e.role("solver") if t.correct is not None]
        if solvers:
            n, c = len(solvers), sum(bool(t.correct) for t in solvers)
            add("solver_pass@1", c / n)
            if n >= k:
                add(f"solver_pass@{k}", pass_at_k(n, c, k))
        judged = [(e, e.role("judge")[0]) for e in task if e.role("judge")]
        if judged:
            n, c = len(judged), sum(bool(j.correct) for _, j in judged)
            add("judge_pass@1", c / n)
            if n >= k:
                add(f"judge_pass@{k}", pass_at_k(n, c, k))
        for e, j in judged:
            candidates = [bool(t.correct) for t in e.role("solver")]
            if any(candidates):
                add("judge_accuracy", float(bool(j.correct)))
                if not all(candidates):
                    add("judge_accuracy_mixed", float(bool(j.correct)))
        for e in task:
            for t in e.trajectories:
                add(f"reward/{t.name}", t.reward)
    return {key: sum(values) / len(values) for key, values in out.items()}
