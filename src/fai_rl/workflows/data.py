"""Task rows for workflows: the recipe's prompt column (as plain GRPO reads it), or workflow.solver_prompt rendered
over each row's columns, so datasets without a prompt column work by name (Jiayi-Pan/Countdown-Tasks-3to4 has only
`target` and `nums`). Every column travels with the row for the rewards; rows are {"prompt": messages, ...}.
"""

from __future__ import annotations

import string

from fai_rl.config.schema import Recipe
from fai_rl.data.formats import with_system
from fai_rl.data.prepare import split_eval
from fai_rl.data.rl import load_prompt_rows
from fai_rl.data.sources import limit_problems, load_source
from fai_rl.errors import DataError


def load_workflow_rows(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(train, eval) task rows: {"prompt": [system?, user], "answer"?: ..., every other column}."""
    template, instruction = recipe.workflow.solver_prompt, recipe.workflow.solver_instruction
    if template is None:
        train, evaluation = load_prompt_rows(recipe)
        return [with_instruction(r, instruction) for r in train], [with_instruction(r, instruction) for r in evaluation]
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    out: dict[str, list[dict]] = {}
    for which in ("datasets", "eval_datasets"):
        rows: list[dict] = []
        for i, spec in enumerate(getattr(recipe.data, which)):
            source = load_source(spec, f"data.{which}[{i}]")
            missing = [f for f in fields if f not in source.columns]
            if missing:
                raise DataError(
                    f"workflow.solver_prompt: uses {', '.join('{' + f + '}' for f in missing)} but "
                    f"{source.key} '{spec.name}' has columns [{', '.join(source.columns)}]; name its columns."
                )
            problems = []
            for j, row in enumerate(source.rows):
                try:
                    text = template.format(**{k: listed(v) for k, v in row.items()}) + instruction
                except (KeyError, IndexError, ValueError) as e:
                    problems.append(f"{source.origin(j)}: workflow.solver_prompt cannot be rendered ({e}).")
                    continue
                extra = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
                if spec.answer_column in row:
                    extra["answer"] = row[spec.answer_column]
                messages = with_system([{"role": "user", "content": text}], recipe.data.system_prompt)
                rows.append({**extra, "prompt": messages})
            if problems:
                raise DataError(limit_problems(problems))
        out[which] = rows
    return split_eval(out["datasets"], out["eval_datasets"], recipe)


def listed(value):
    """A list column as a solver prompt shows it, '3, 5, 7' (rLLM's ", ".join), not Python's '[3, 5, 7]'."""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def with_instruction(row: dict, instruction: str) -> dict:
    """The row with workflow.solver_instruction appended to its last user message."""
    if not instruction:
        return row
    messages = [dict(m) for m in row["prompt"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] += instruction
    return {**row, "prompt": messages}


def describe_workflow(recipe: Recipe, tokenizer, train: list[dict], evaluation: list[dict], rewards: list) -> str:
    """What --dry-run shows of a workflow run: sizes, the solver prompt and the judge prompt as rendered, rewards."""
    from fai_rl.rewards import preview_rewards
    from fai_rl.workflows.base import render_chat
    from fai_rl.schedule import Schedule
    from fai_rl.workflows.solver_judge import SolverJudgeWorkflow

    w, t = recipe.workflow, recipe.training
    tasks = Schedule(recipe, max(1, len(train))).batch
    lines = [
        f"workflow: {w.type}; grouping {w.grouping}, norm_adv_by_std {w.norm_adv_by_std}",
        f"tasks: {len(train)} train, {len(evaluation)} eval; per step {tasks} tasks x {t.num_generations} episodes; "
        f"completions up to {t.max_completion_length} tokens",
    ]
    if w.type == "solver_judge":
        lines.append(f"solver: {w.num_solutions} solutions per episode, reward {w.solver_reward:g} x rewards total; "
                     f"judge: reward {w.judge_reward:g} when its pick reaches {w.correct_threshold:g}")
    for n, row in enumerate(train[:2], start=1):
        ids = render_chat(tokenizer, row["prompt"])
        extra = {k: v for k, v in row.items() if k != "prompt"}
        lines += [f"--- prompt {n} (solver; {len(ids)} tokens; columns for rewards: {extra})",
                  tokenizer.decode(ids).replace("\n", "\\n")]
    if w.type == "solver_judge" and train:
        judge = SolverJudgeWorkflow(w, score=lambda rows, texts: [], max_length=recipe.data.max_length)
        candidates = [f"<solution {i}>" for i in range(1, w.num_solutions + 1)]
        ids = render_chat(tokenizer, judge.judge_messages(train[0], candidates))
        lines += [f"--- judge prompt 1 (candidates as placeholders; {len(ids)} tokens with them)",
                  tokenizer.decode(ids).replace("\n", "\\n")]
    long = sum(len(render_chat(tokenizer, row["prompt"])) > recipe.data.max_length for row in train)
    lines.append(f"solver prompts longer than data.max_length={recipe.data.max_length}: {long} of {len(train)} "
                 "(cut from the left when sampled, counted per step as truncated_prompts)")
    lines.append(preview_rewards(rewards, train))
    return "\n".join(lines)
