"""Multi-step workflows for RL: the same policy plays several roles (solver, judge, ...), trained with GRPO.

`Workflow` (run a task row through a `Sampler`, return an `Episode` of `Trajectory`s of `Step`s), the built-in
`single` and `solver_judge` workflows, the `module:Class` loader, rLLM-style grouping into advantages, and
`evaluate_workflow` (pass@1 / pass@k of the solver and of solver + judge). docs/workflows.md is the guide; the
training loops are fai_rl.backends.local.workflow and fai_rl.backends.tinker.workflow.
"""

from fai_rl.workflows.base import Completion, Episode, Sampler, Step, Trajectory, Workflow, render_chat, run_workflow
from fai_rl.workflows.evaluate import evaluate_workflow, summarize_episodes
from fai_rl.workflows.grouping import ScoredStep, step_advantages
from fai_rl.workflows.loader import (
    BUILTIN_WORKFLOWS,
    build_workflow,
    check_workflow,
    resolve_workflow_class,
    reward_scorer,
)
from fai_rl.workflows.recipe_eval import evaluate_recipe
from fai_rl.workflows.solver_judge import SingleWorkflow, SolverJudgeWorkflow, parse_pick

__all__ = [
    "BUILTIN_WORKFLOWS",
    "Completion",
    "Episode",
    "Sampler",
    "ScoredStep",
    "SingleWorkflow",
    "SolverJudgeWorkflow",
    "Step",
    "Trajectory",
    "Workflow",
    "build_workflow",
    "check_workflow",
    "evaluate_recipe",
    "evaluate_workflow",
    "parse_pick",
    "render_chat",
    "resolve_workflow_class",
    "reward_scorer",
    "run_workflow",
    "step_advantages",
    "summarize_episodes",
]
