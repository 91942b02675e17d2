"""From `workflow.type` to a workflow object: built-ins by name, your own class as `module:Class`.

Resolution uses fai_rl.imports, the importer of reward plug-ins too, so `module:Class` and
`path/to/file.py:Class` behave exactly as `module:function` rewards do: found relative to the directory you run from,
and every failure is one message naming `workflow.type`, the value and the fix, reported at recipe load (through
fai_rl.backends.check_dispatch) before any model loads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from fai_rl.config.schema import Recipe
from fai_rl.errors import RecipeError
from fai_rl.imports import Unresolved, import_named
from fai_rl.workflows.solver_judge import SingleWorkflow, SolverJudgeWorkflow

BUILTIN_WORKFLOWS: dict[str, type] = {"single": SingleWorkflow, "solver_judge": SolverJudgeWorkflow}


def resolve_workflow_class(name: str) -> type:
    """The class `workflow.type` names; Unresolved (why + fix) when there is none."""
    name = name.strip()
    if name in BUILTIN_WORKFLOWS:
        return BUILTIN_WORKFLOWS[name]
    if ":" not in name:
        raise Unresolved(f"'{name}' is not a built-in workflow (single, solver_judge) nor module:Class.")
    module, target, attr = import_named(name, "module:Class or path/to/file.py:Class")
    cls = getattr(module, attr, None)
    if cls is None:
        own = [k for k, v in vars(module).items()
               if inspect.isclass(v) and v.__module__ == module.__name__ and not k.startswith("_")]
        raise Unresolved(f"'{target}' has no '{attr}'; its classes: {', '.join(own) or 'none'}.")
    if not inspect.isclass(cls):
        raise Unresolved(f"'{name}' is a {type(cls).__name__}, not a class; name a class with a run(row, sampler).")
    if not callable(getattr(cls, "run", None)) and not callable(getattr(cls, "run_batch", None)):
        raise Unresolved(f"'{name}' has no run(row, sampler) method; a workflow returns an episode from a task row.")
    return cls


def check_workflow(recipe: Recipe) -> list[tuple[str, str]]:
    """Recipe rule: workflow.type names a workflow that imports (only checked when it is module:Class)."""
    if ":" not in recipe.workflow.type:
        return []
    try:
        resolve_workflow_class(recipe.workflow.type)
    except Unresolved as e:
        return [("workflow.type", str(e))]
    return []


def build_workflow(recipe: Recipe, score: Callable[[list[dict], list[str]], list[float]]):
    """The recipe's workflow object, constructed with its config, the reward scorer and the prompt length limit."""
    try:
        cls = resolve_workflow_class(recipe.workflow.type)
    except Unresolved as e:
        raise RecipeError(f"workflow.type: {e}") from None
    kwargs = dict(recipe.workflow.kwargs) if cls not in BUILTIN_WORKFLOWS.values() else {}
    try:
        return cls(config=recipe.workflow, score=score, max_length=recipe.data.max_length, **kwargs)
    except TypeError as e:
        raise RecipeError(
            f"workflow.type: {recipe.workflow.type} could not be constructed ({e}); it is called as "
            "Class(config=..., score=..., max_length=..., **workflow.kwargs)."
        ) from None


def reward_scorer(reward_fns: list) -> Callable[[list[dict], list[str]], list[float]]:
    """score(rows, texts): the recipe rewards' weighted total of each text as the answer to its row."""
    from fai_rl.rewards import score_rewards

    def score(rows: list[dict], texts: list[str]) -> list[float]:
        totals, _ = score_rewards(reward_fns, [row["prompt"] for row in rows], texts, rows)
        return [float(t) for t in totals]

    return score
