"""Evaluating a recipe's workflow on a local model in one call: rewards, held-out rows, workflow and sampler built
from the recipe, then evaluate_workflow.

Kept apart from evaluate.py because it reaches up to the recipe's data (workflows.data), while evaluate.py sits below
the training loop (workflows.loop imports it); in one module they made the import circle data -> loop -> evaluate ->
data.
"""

from __future__ import annotations

from fai_rl.workflows.evaluate import evaluate_workflow


def evaluate_recipe(recipe, model, tokenizer, rows: list[dict] | None = None, k: int | None = None) -> dict[str, float]:
    """evaluate_workflow for a recipe's workflow (and rewards) on a local model: the one call an eval command needs.

    rows default to the recipe's held-out tasks (data.eval_datasets / eval_split_ratio); k to
    training.num_generations_eval, else num_generations; sampling follows the recipe's training.temperature, top_p
    and max_completion_length. workflow.type single gives the plain policy's pass@k.
    """
    from fai_rl.rewards import build_rewards
    from fai_rl.workflows.data import load_workflow_rows
    from fai_rl.workflows.loader import build_workflow, reward_scorer
    from fai_rl.workflows.samplers import LocalSampler

    t = recipe.training
    workflow = build_workflow(recipe, reward_scorer(build_rewards(recipe)))
    rows = load_workflow_rows(recipe)[1] if rows is None else rows
    sampler = LocalSampler(model, tokenizer, max_tokens=t.max_completion_length, temperature=t.temperature,
                           top_p=t.top_p)
    return evaluate_workflow(workflow, sampler, rows, k or t.num_generations_eval)
