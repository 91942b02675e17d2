"""An eval task's dataset -> examples (prompt conversation, reference answer, choices), checked before any model loads.

Rows are read by fai_rl.data.sources.load_source (local files with file:line, dataset dirs, hub datasets, built-in
tasks), so an eval dataset is named exactly like a training one. The prompt comes from `prompt_column` (text) or
`messages_column` (the conversation up to its last user turn); `answer_column` is the reference. Every column also
travels to reward functions, with the reference offered as `answer`, as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from fai_rl.config.schema import EvalRecipe, EvalTaskConfig
from fai_rl.data.sources import limit_problems, load_source
from fai_rl.errors import DataError
from fai_rl.evaluation.metrics import choice_index, format_choices


@dataclass
class Example:
    """One prompt of a task: the conversation to answer, its reference, and (multiple choice) the choices."""

    index: int
    messages: list[dict]
    reference: object = None
    choices: list[str] = field(default_factory=list)
    correct: int | None = None  # multiple choice: index of the right choice
    columns: dict = field(default_factory=dict)  # the row's columns, for reward functions


def check_eval_rewards(recipe: EvalRecipe) -> list[tuple[str, str]]:
    """Recipe rule: every task's reward functions resolve and take their kwargs (the training rule, re-keyed)."""
    from fai_rl.rewards import check_rewards

    out = []
    for i, task in enumerate(recipe.evaluation.tasks):
        for key, message in check_rewards(SimpleNamespace(rewards=task.rewards)):
            out.append((f"evaluation.tasks[{i}].{key}", message))
    return out


def load_examples(task: EvalTaskConfig, key: str) -> list[Example]:
    """The task's examples; DataError naming `key.dataset.<column key>` or the bad rows."""
    spec = task.dataset
    source = load_source(spec, f"{key}.dataset")
    columns = source.columns
    needs = []
    if spec.prompt_column not in columns and spec.messages_column not in columns:
        needs.append(f"{key}.dataset.prompt_column (now '{spec.prompt_column}') or {key}.dataset.messages_column "
                     f"(now '{spec.messages_column}')")
    if spec.answer_column not in columns and (task.type == "multiple_choice" or task.metrics):
        needs.append(f"{key}.dataset.answer_column (now '{spec.answer_column}')")
    if task.type == "multiple_choice" and task.choices_column not in columns:
        needs.append(f"{key}.choices_column (now '{task.choices_column}')")
    if needs:
        raise DataError(f"{key}.dataset: '{spec.name}' has columns [{', '.join(columns)}] but task "
                        f"'{task.name}' needs {' and '.join(needs)}; set the keys that name your columns.")
    examples, problems = [], []
    for i, row in enumerate(source.rows):
        result = _example(i, row, task)
        if isinstance(result, str):
            problems.append(f"{source.origin(i)}: {result}.")
        else:
            examples.append(result)
    if problems:
        raise DataError(limit_problems(problems))
    return examples


def _example(i: int, row: dict, task: EvalTaskConfig) -> Example | str:
    spec = task.dataset
    if spec.prompt_column in row:
        prompt = row[spec.prompt_column]
        if not isinstance(prompt, str) or not prompt.strip():
            return f"'{spec.prompt_column}' must be non-empty text, got {prompt!r:.60}"
        messages = [{"role": "user", "content": prompt}]
    else:
        conversation = row.get(spec.messages_column)
        if not isinstance(conversation, list) or not all(isinstance(m, dict) and "role" in m for m in conversation):
            return f"'{spec.messages_column}' must be a list of {{role, content}} messages"
        last_user = max((j for j, m in enumerate(conversation) if m["role"] == "user"), default=None)
        if last_user is None:
            return f"'{spec.messages_column}' has no user turn to prompt with"
        messages = [{"role": m["role"], "content": m.get("content", "")} for m in conversation[: last_user + 1]]
    if task.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": task.system_prompt}, *messages]
    reference = row.get(spec.answer_column)
    columns = {k: v for k, v in row.items() if k not in (spec.prompt_column, spec.messages_column)}
    columns["answer"] = reference
    example = Example(i, messages, reference, columns=columns)
    if task.type != "multiple_choice":
        if task.metrics and reference is None:
            return f"'{spec.answer_column}' is empty; every row needs a reference answer"
        return example
    choices = row.get(task.choices_column)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, (str, int, float)) for c in choices):
        return f"'{task.choices_column}' must be a list of at least two choice texts, got {choices!r:.60}"
    example.choices = [str(c) for c in choices]
    example.correct = choice_index(reference, example.choices)
    if example.correct is None:
        return (f"'{spec.answer_column}' = {reference!r:.40} names none of the {len(choices)} choices; give a 0-based "
                "index, a letter (A, B, ...) or the text of the right choice")
    if task.multiple_choice_mode == "generate":
        last = example.messages[-1]
        listed = format_choices(last["content"], example.choices)
        example.messages = [*example.messages[:-1], {**last, "content": listed}]
    return example
