"""Rows for the preference and RL algorithms: prompts (GRPO, GSPO, PPO) and preference pairs (DPO).

Prompt rows come from `prompt_column` (text, becomes [system?, user]) or `messages_column` (the conversation up to
its last user turn). Every other column travels with the row, so reward functions receive it by name; the recipe's
`answer_column` is also offered as `answer`, the name the built-in rewards read.

Preference rows come from `prompt_column` + `chosen_column` + `rejected_column`, where chosen/rejected are text or
conversations; without a prompt column, chosen and rejected are full conversations sharing everything but the last
assistant turn. Both shapes end as TRL's conversational {prompt, chosen, rejected}.
"""

from __future__ import annotations

from fai_rl.config.schema import DatasetSpec, Recipe
from fai_rl.data.formats import short, with_system, check_messages
from fai_rl.data.prepare import split_eval
from fai_rl.data.sources import limit_problems, load_source
from fai_rl.errors import DataError

RESERVED = ("prompt", "completion", "completions", "chosen", "rejected")


def load_prompt_rows(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(train, eval) prompt rows: {"prompt": messages, "answer"?: ..., every other column}."""
    return _load(recipe, _prompt_row, "a prompt")


def load_preference_rows(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(train, eval) preference rows in TRL's conversational form {prompt, chosen, rejected, answer?}."""
    return _load(recipe, _preference_row, "preference pairs")


def _load(recipe: Recipe, convert, what: str) -> tuple[list[dict], list[dict]]:
    out: dict[str, list[dict]] = {}
    for which in ("datasets", "eval_datasets"):
        rows, problems = [], []
        for i, spec in enumerate(getattr(recipe.data, which)):
            source = load_source(spec, f"data.{which}[{i}]")
            _check_columns(source.columns, spec, source.key, convert, what)
            for j, row in enumerate(source.rows):
                result = convert(row, spec, recipe.data.system_prompt)
                if isinstance(result, str):
                    problems.append(f"{source.origin(j)}: {result}.")
                else:
                    rows.append(result)
        if problems:
            raise DataError(limit_problems(problems))
        out[which] = rows
    train, evaluation = split_eval(out["datasets"], out["eval_datasets"], recipe)
    return train, evaluation


def _check_columns(columns: list[str], spec: DatasetSpec, key: str, convert, what: str) -> None:
    if convert is _prompt_row:
        if spec.prompt_column in columns or spec.messages_column in columns:
            return
        needs = f"{key}.prompt_column (now '{spec.prompt_column}') or {key}.messages_column (now '{spec.messages_column}')"
    else:
        has_pair = spec.chosen_column in columns and spec.rejected_column in columns
        if has_pair:
            return
        needs = (f"{key}.chosen_column and {key}.rejected_column (now '{spec.chosen_column}' / "
                 f"'{spec.rejected_column}'), with {key}.prompt_column or full conversations")
    raise DataError(
        f"{key}: '{spec.name}' has columns [{', '.join(columns)}] but {what} need {needs}; "
        "set the keys that name your columns."
    )


def _extra_columns(row: dict, spec: DatasetSpec, used: tuple[str, ...]) -> dict:
    extra = {k: v for k, v in row.items() if k not in used and k not in RESERVED}
    if spec.answer_column in row:
        extra["answer"] = row[spec.answer_column]
    return extra


def _prompt_row(row: dict, spec: DatasetSpec, system_prompt: str | None) -> dict | str:
    if spec.prompt_column in row:
        prompt = row[spec.prompt_column]
        if not isinstance(prompt, str) or not prompt.strip():
            return f"'{spec.prompt_column}' must be non-empty text, got {short(prompt)}"
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = row.get(spec.messages_column)
        problem = check_messages(messages, spec.messages_column, need_assistant=False)
        if problem:
            return problem
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return f"'{spec.messages_column}' has no user turn to prompt with"
        messages = [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]
    used = (spec.prompt_column, spec.messages_column)
    return {"prompt": with_system(messages, system_prompt), **_extra_columns(row, spec, used)}


def _preference_row(row: dict, spec: DatasetSpec, system_prompt: str | None) -> dict | str:
    chosen, rejected = row.get(spec.chosen_column), row.get(spec.rejected_column)
    if spec.prompt_column in row:
        prompt = row[spec.prompt_column]
        if isinstance(prompt, str) and prompt.strip():
            prompt_messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and not check_messages(prompt, spec.prompt_column, need_assistant=False):
            prompt_messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            return f"'{spec.prompt_column}' must be non-empty text or a conversation, got {short(prompt)}"
        replies = []
        for col, value in ((spec.chosen_column, chosen), (spec.rejected_column, rejected)):
            reply = _reply(value)
            if reply is None:
                return f"'{col}' must be non-empty text or a conversation ending with an assistant turn, got {short(value)}"
            replies.append(reply)
    else:  # full conversations that differ in the last assistant turn
        for col, value in ((spec.chosen_column, chosen), (spec.rejected_column, rejected)):
            problem = check_messages(value, col)
            if problem:
                return problem
            if value[-1]["role"] != "assistant":
                return f"'{col}' must end with an assistant turn"
        if chosen[:-1] != rejected[:-1]:
            return f"'{spec.chosen_column}' and '{spec.rejected_column}' must share every turn but the last"
        prompt_messages = [{"role": m["role"], "content": m["content"]} for m in chosen[:-1]]
        replies = [chosen[-1]["content"], rejected[-1]["content"]]
    if replies[0] == replies[1]:
        return "chosen and rejected are the same reply, so there is no preference to learn"
    used = (spec.prompt_column, spec.chosen_column, spec.rejected_column)
    return {
        "prompt": with_system(prompt_messages, system_prompt),
        "chosen": [{"role": "assistant", "content": replies[0]}],
        "rejected": [{"role": "assistant", "content": replies[1]}],
        **_extra_columns(row, spec, used),
    }


def _reply(value) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        content = value[-1].get("content")
        return content if isinstance(content, str) and content.strip() else None
    return None


def render_prompts(tokenizer, rows: list[dict], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each row's prompt through the chat template with the assistant turn opened (left-truncated)."""
    from fai_rl.sampling import render_chat

    return [render_chat(tokenizer, row["prompt"], max_length) for row in rows]
