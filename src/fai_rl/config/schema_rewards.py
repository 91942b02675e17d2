"""Recipe sections for how completions are scored and played out: each `rewards:` entry, and `workflow:`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fai_rl.config.schema_fields import _f


@dataclass
class RewardSpec:
    """One reward function (used by the RL algorithms)."""

    function: str = _f(help="A built-in reward name, `module:function`, or `path/to/file.py:function`.")
    weight: float = _f(1.0, help="Weight of this reward in the sum.")
    kwargs: dict[str, Any] = _f({}, help="Keyword arguments passed to the function.")


# The judge prompt's placeholders (fai_rl.workflows.solver_judge renders them; rules.py checks them).
JUDGE_PLACEHOLDERS = ("problem", "solutions", "num_solutions")
DEFAULT_JUDGE_PROMPT = (  # a generic verifier prompt; rLLM's Countdown one is in recipes/workflows/
    "You are an expert verifier. Given a problem and {num_solutions} attempted solutions, select a correct one.\n"
    "Problem:\n{problem}\nSolutions:\n{solutions}\n"
    "Output the number of a correct solution within <answer>...</answer> tags, e.g. <answer>1</answer>. If several "
    "are correct, output the first correct one."
)


@dataclass
class WorkflowConfig:
    """GRPO/GSPO over multi-step workflows: the same policy plays several roles (docs/workflows.md)."""

    type: str = _f(
        "single",
        help="single (one completion per prompt: plain GRPO/GSPO), solver_judge (solvers propose num_solutions "
        "answers, a judge played by the same model picks one; both roles trained), or module:Class / "
        "path/to/file.py:Class for your own workflow.",
    )
    num_solutions: int = _f(2, help="solver_judge: solutions the solver proposes per episode (the judge picks one).")
    solver_prompt: Optional[str] = _f(
        None,
        help="The solver's user message, a template over the row's columns, e.g. 'Using the numbers {nums}, make "
        "{target}.' (null: the row's prompt column, as plain GRPO uses it); a list column is written '3, 5, 7'.",
    )
    solver_instruction: str = _f(
        "",
        help="Appended to the solver's message but not to the judge's {problem} (rLLM's solver adds '. Output the "
        "final answer within <answer>...</answer>' to the problem it shows both roles).",
    )
    answer_tags: bool = _f(
        False,
        help="solver_judge: rLLM's parsing. true: a solver's answer is its first <answer>...</answer> (else 'No "
        "solution found'), rewarded and shown to the judge as <answer>...</answer>; the judge's pick is its first "
        "<answer>k</answer> (else none). false: the answer is the last <answer> tag's content, else the whole "
        "completion; the pick the last <answer>k</answer>, else the first integer (small models write no tags).",
    )
    judge_prompt: str = _f(
        DEFAULT_JUDGE_PROMPT,
        help="solver_judge: the judge's user message; placeholders {problem} (the solver's prompt text), "
        "{solutions} (the candidates, one judge_solution_format each, joined by newlines), {num_solutions}.",
    )
    judge_solution_format: str = _f(
        "Solution {index}: {solution}",
        help="solver_judge: how each candidate is shown to the judge; placeholders {index} (from 1) and {solution}.",
    )
    solver_reward: float = _f(1.0, help="solver_judge: the solver's reward is this times the recipe rewards' total.")
    judge_reward: float = _f(
        1.0, help="solver_judge: the judge's reward is this when the solution it picks is correct, else 0."
    )
    correct_threshold: float = _f(
        1.0,
        help="A solution counts as correct (for the judge's reward, pass@k and judge accuracy) when the recipe "
        "rewards' total reaches this; countdown gives 1.0 for a right equation and 0.1 for a well-formed miss.",
    )
    grouping: str = _f(
        "trajectory",
        help="GRPO groups: trajectory (rLLM's default: the trajectories of one role over the num_generations "
        "episodes of a task form a group; each trajectory's reward is broadcast to its steps) or step (steps at the "
        "same position of one role are grouped, each with its own reward).",
        choices=("trajectory", "step"),
    )
    norm_adv_by_std: bool = _f(True, help="Divide advantages by their group's std (population std, as rLLM).")
    kwargs: dict[str, Any] = _f({}, help="module:Class workflows: keyword arguments passed to the class.")
