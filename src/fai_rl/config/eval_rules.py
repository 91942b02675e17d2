"""Rules of an evaluation recipe (fai-rl-eval): tasks, metrics and the training recipes it names.

Same contract as config/rules.py. `load_recipe` is passed in by config/load.py, so this module never imports it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator

from fai_rl.config.schema import EVAL_METRICS, EvalRecipe, Recipe
from fai_rl.errors import RecipeError

Problem = tuple[str, str]

def check_eval_rules(r: EvalRecipe, load_recipe: Callable[[str], Recipe]) -> list[Problem]:
    """Every cross-field / range problem of an evaluation recipe (rewards are checked by the caller's extra rule).

    `load_recipe` (fai_rl.config.load's) loads a workflow task's training recipe: passed in, so that rules never
    import the loader that imports them.
    """
    return list(_eval_rules(r, load_recipe))


def _eval_rules(r: EvalRecipe, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    e = r.evaluation
    if not e.models:
        yield "evaluation.models", "is empty; name at least one model, e.g. evaluation.models=[runs/my-run]."
    for i, spec in enumerate([*e.models, *([e.baseline] if e.baseline is not None else [])]):
        key = f"evaluation.models[{i}]" if i < len(e.models) else "evaluation.baseline"
        if not spec.strip():
            yield key, "is empty; name a run dir, a model dir, a hub id or a tinker:// path."
        elif spec.startswith("tinker://") and not e.base_model:
            yield "evaluation.base_model", (
                f"is null, but {key} is a Tinker path ({spec}); name the base model its weights were trained from "
                "(its tokenizer renders the prompts), e.g. evaluation.base_model=Qwen/Qwen3-4B-Instruct-2507."
            )
    if not e.tasks:
        yield "evaluation.tasks", "is empty; add a task, e.g. a name and dataset: {name: fai-rl/digits, split: test}."
    for key, value in (("batch_size", e.batch_size), ("request_timeout_s", e.request_timeout_s)):
        if value <= 0:
            yield f"evaluation.{key}", f"{value} must be greater than 0."
    seen: dict[str, int] = {}
    for i, task in enumerate(e.tasks):
        key = f"evaluation.tasks[{i}]"
        if task.name in seen:
            yield f"{key}.name", (f"'{task.name}' is also the name of evaluation.tasks[{seen[task.name]}]; names "
                                  "must differ.")
        seen.setdefault(task.name, i)
        if not task.name.strip():
            yield f"{key}.name", "is empty; name the task (it labels the table and the files)."
        yield from _eval_task_rules(task, key, load_recipe)


def _eval_task_rules(task, key: str, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    allowed = EVAL_METRICS[task.type]
    for j, metric in enumerate(task.metrics):
        if metric not in allowed:
            near = difflib.get_close_matches(metric, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'? " if near else ""
            extra = " (reward functions go under rewards:)" if task.type == "generate" else ""
            yield f"{key}.metrics[{j}]", (
                f"'{metric}' is not a {task.type} metric; {hint}use {', '.join(allowed)}{extra}."
            )
    if task.type == "workflow":
        yield from _eval_workflow_rules(task, key, load_recipe)
    elif task.workflow_recipe is not None:
        yield f"{key}.workflow_recipe", f"is only read by type workflow (this task is {task.type}); remove it."
    if task.type == "multiple_choice" and task.rewards:
        yield f"{key}.rewards", ("multiple_choice tasks are scored by accuracy only; remove rewards or use type "
                                 "generate.")
    if not task.metrics and not task.rewards:
        yield f"{key}.metrics", f"is empty and there are no rewards: nothing would be scored; use {allowed[0]}."
    if task.num_samples < 1:
        yield f"{key}.num_samples", f"{task.num_samples} must be at least 1."
    elif task.num_samples > 1 and task.temperature == 0:
        yield f"{key}.num_samples", (
            f"{task.num_samples} samples at temperature 0 (greedy) would all be the same answer; set "
            f"{key}.temperature (e.g. 1.0) or num_samples=1."
        )
    if task.type == "multiple_choice" and task.multiple_choice_mode == "loglikelihood" and task.num_samples != 1:
        yield f"{key}.num_samples", "must be 1 for multiple_choice by loglikelihood (nothing is sampled)."
    for j, k in enumerate(task.pass_k):
        if not 1 <= k <= max(1, task.num_samples):
            yield f"{key}.pass_k[{j}]", (
                f"{k} must be in 1..num_samples ({task.num_samples}): pass@k draws k of the n samples; raise "
                f"{key}.num_samples or lower k."
            )
    if task.temperature < 0:
        yield f"{key}.temperature", f"{task.temperature} must be 0 (greedy) or more."
    if not 0 < task.top_p <= 1:
        yield f"{key}.top_p", f"{task.top_p} must be in (0, 1]."
    if task.max_new_tokens <= 0:
        yield f"{key}.max_new_tokens", f"{task.max_new_tokens} must be greater than 0, e.g. 256."
    if task.numeric_tolerance < 0:
        yield f"{key}.numeric_tolerance", f"{task.numeric_tolerance} must be 0 or more."
    if task.dataset.max_samples is not None and task.dataset.max_samples <= 0:
        yield f"{key}.dataset.max_samples", f"{task.dataset.max_samples} must be greater than 0; or null for all rows."
    if not task.dataset.name.strip():
        yield f"{key}.dataset.name", "is empty; name a file, a dataset dir, a hub dataset or a built-in task."


def _eval_workflow_rules(task, key: str, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    """A workflow task names a training recipe with a workflow; its rewards score the episodes."""
    if task.rewards:
        yield f"{key}.rewards", "a workflow task is scored by the rewards of its workflow_recipe; remove them here."
    if task.workflow_recipe is None:
        yield f"{key}.workflow_recipe", ("is null; name the training recipe whose workflow to run, e.g. "
                                         "recipes/quickstart/solver_judge.yaml.")
        return
    try:
        recipe = load_recipe(task.workflow_recipe)
    except RecipeError as e:
        yield f"{key}.workflow_recipe", f"'{task.workflow_recipe}' does not load: " + "; ".join(e.problems)
        return
    if not recipe.rewards:
        yield f"{key}.workflow_recipe", f"'{task.workflow_recipe}' has no rewards: nothing would score the episodes."
