"""Rows for the preference and RL algorithms: prompts (GRPO, GSPO, PPO) and preference pairs (DPO).

Prompt rows come from `prompt_column` (text, becomes [system?, user]) or `messages_column` (the conversation up to
its last user turn). Every other column travels with the row, so reward functions receive it by name; the recipe's
`answer_column` is also offered as `answer`, the name the built-in rewards read. With `prompt_template` (FAI-RL's
gsm8k / openmathinstruct, fai_rl.data.templates) the prompt is that template's conversation around the question and
`answer` is the template's reference answer (the text after #### for gsm8k).

Preference rows come from `prompt_column` + `chosen_column` + `rejected_column`, where chosen/rejected are text or
conversations. Without a prompt column, chosen and rejected are either full conversations sharing everything but the
last assistant turn, or (Anthropic/hh-rlhf) two texts sharing a prefix, which TRL's extract_prompt splits off as the
prompt. Every shape ends as TRL's conversational {prompt, chosen, rejected}: TRL needs one type across a mixed
data set (FAI-RL's recipes mix hh-rlhf with coconot's prompt column), Tinker's DPO renders pairs through the chat
template, and an hh-rlhf transcript ("\n\nHuman: ...\n\nAssistant: ...") is read as the turns it writes, so
an instruct model sees its own chat format, as TRL's conversational hh-rlhf (trl-lib/hh-rlhf-helpful-base) does.
"""

from __future__ import annotations

import re

from fai_rl.config.schema import DatasetSpec, Recipe
from fai_rl.data.formats import short, with_system, check_messages
from fai_rl.data.prepare import split_eval
from fai_rl.data.sources import Source, limit_problems, load_source
from fai_rl.data.templates import template_answer, template_prompt
from fai_rl.data.truncation import Truncations
from fai_rl.errors import DataError

RESERVED = ("prompt", "completion", "completions", "chosen", "rejected")
# hh-rlhf's transcript markers; a text pair is a transcript when it starts with a Human turn.
_HUMAN, _ASSISTANT = "Human:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
# The columns FAI-RL's shipped recipes name for its two template data sets, for error messages.
_TEMPLATE_COLUMNS = "openai/gsm8k: question / answer; nvidia/OpenMathInstruct-2: problem / expected_answer"


def load_prompt_rows(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(train, eval) prompt rows: {"prompt": messages, "answer"?: ..., every other column}."""
    return _load(recipe, _prompt_row, "a prompt")


def load_preference_rows(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(train, eval) preference rows in TRL's conversational form {prompt, chosen, rejected, answer?}."""
    return _load(recipe, _preference_row, "preference pairs")


class Skip(str):
    """A row left out, not an error: counted and said in one note per source (FAI-RL's data sets hold such rows)."""


def _load(recipe: Recipe, convert, what: str) -> tuple[list[dict], list[dict]]:
    out: dict[str, list[dict]] = {}
    for which in ("datasets", "eval_datasets"):
        rows, problems = [], []
        for i, spec in enumerate(getattr(recipe.data, which)):
            source = load_source(spec, f"data.{which}[{i}]")
            _check_columns(source, convert, what)
            skipped: dict[str, list[str]] = {}
            for j, row in enumerate(source.rows):
                result = convert(row, spec, recipe.data.system_prompt, source.key)
                if isinstance(result, Skip):
                    skipped.setdefault(str(result), []).append(source.origin(j))
                elif isinstance(result, str):
                    problems.append(f"{source.origin(j)}: {result}.")
                else:
                    rows.append(result)
            for reason, where in skipped.items():
                print(f"note: {source.key}: {len(where)} of {len(source.rows)} rows skipped ({reason}; first: "
                      f"{where[0]}).", flush=True)
        if problems:
            raise DataError(limit_problems(problems))
        out[which] = rows
    train, evaluation = split_eval(out["datasets"], out["eval_datasets"], recipe)
    return train, evaluation


def _check_columns(source: Source, convert, what: str) -> None:
    columns, spec, key = source.columns, source.spec, source.key
    if convert is _prompt_row and spec.prompt_template is not None:
        missing = [f"{key}.{k} (now '{getattr(spec, k)}')" for k in ("prompt_column", "answer_column")
                   if getattr(spec, k) not in columns]
        if not missing:
            return
        raise DataError(
            f"{key}: {source.origin(0)} has columns [{', '.join(columns)}] but {key}.prompt_template "
            f"'{spec.prompt_template}' reads the question and the answer from {' and '.join(missing)}; set the keys "
            f"that name your columns ({_TEMPLATE_COLUMNS})."
        )
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


def _prompt_row(row: dict, spec: DatasetSpec, system_prompt: str | None, key: str) -> dict | str:
    if spec.prompt_template is not None:
        return _template_row(row, spec, key)
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


def _template_row(row: dict, spec: DatasetSpec, key: str) -> dict | str:
    """FAI-RL's template conversation as the prompt and its reference answer as `answer` (data.system_prompt is not
    added: the template brings its own system message, as in FAI-RL)."""
    values = []
    for name in ("prompt_column", "answer_column"):
        column = getattr(spec, name)
        if column not in row:
            return (f"no '{column}' column ({key}.{name}), which prompt_template '{spec.prompt_template}' reads; "
                    f"set {key}.{name} to the column that holds it ({_TEMPLATE_COLUMNS})")
        value = row[column]
        if not isinstance(value, str) or not value.strip():
            return f"'{column}' ({key}.{name}) must be non-empty text, got {short(value)}"
        values.append(value)
    question, answer = values
    extra = _extra_columns(row, spec, (spec.prompt_column,))
    return {"prompt": template_prompt(question), **extra, "answer": template_answer(spec.prompt_template, answer)}


def _preference_row(row: dict, spec: DatasetSpec, system_prompt: str | None, key: str) -> dict | str:
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
    elif isinstance(chosen, str) and isinstance(rejected, str):  # Anthropic/hh-rlhf: two texts sharing the prompt
        split = _split_text_pair(chosen, rejected, spec, key)
        if isinstance(split, str):
            return split
        prompt_messages, replies = split
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


def _split_text_pair(chosen: str, rejected: str, spec: DatasetSpec, key: str) -> tuple[list[dict], list[str]] | str:
    """(prompt messages, [chosen reply, rejected reply]) of two texts sharing a prefix, or why not.

    TRL's extract_prompt finds the shared prefix character by character. In an hh-rlhf transcript the cut is moved
    back to the start of the last shared Assistant turn, so each reply is a whole assistant turn (extract_prompt alone
    would cut inside a reply: "...Assistant: I" + " like it" / " hate it"), and the prefix becomes its turns.
    """
    from trl.data_utils import extract_prompt  # TRL's own split; imported only for data that needs it

    names = f"'{spec.chosen_column}' and '{spec.rejected_column}'"
    if not chosen.strip() or not rejected.strip():
        return f"{names} must both be non-empty text, got {short(chosen)} / {short(rejected)}"
    if chosen == rejected:  # Anthropic/hh-rlhf holds some: no preference to learn, so left out and counted
        return Skip(f"{names} are the same text, so there is no preference to learn")
    shared = extract_prompt({"chosen": chosen, "rejected": rejected})["prompt"]
    if chosen.lstrip().startswith(_HUMAN):
        turn = shared.rfind(_ASSISTANT)
        if turn < 0:
            return (f"{names} differ before their first '{_ASSISTANT.strip()}' turn, so they share no prompt; a pair "
                    "must repeat the conversation and differ only in the last assistant reply")
        prompt_messages = _transcript_turns(shared[:turn])
        cut = turn + len(_ASSISTANT)
        replies = [chosen[cut:].strip(), rejected[cut:].strip()]
    else:
        if not shared.strip():
            return (f"{names} share no prefix, so there is no prompt to split off; name the prompt "
                    f"column in {key}.prompt_column (now '{spec.prompt_column}') or repeat the prompt in both")
        prompt_messages = [{"role": "user", "content": shared}]
        replies = [chosen[len(shared) :], rejected[len(shared) :]]
    for col, reply in zip((spec.chosen_column, spec.rejected_column), replies):
        if not reply.strip():
            return f"'{col}' has no reply after the prompt it shares with the other side"
    return prompt_messages, replies


def _transcript_turns(text: str) -> list[dict]:
    """hh-rlhf's "\n\nHuman: a\n\nAssistant: b..." as [{user: a}, {assistant: b}, ...]."""
    parts = _TURN.split("\n\n" + text.lstrip())
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def _reply(value) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        content = value[-1].get("content")
        return content if isinstance(content, str) and content.strip() else None
    return None


def render_prompts(tokenizer, rows: list[dict], max_length: int | None = None,
                   cuts: Truncations | None = None) -> list[list[int]]:
    """Token ids of each row's prompt through the chat template with the assistant turn opened, left-truncated to
    max_length, never silently: counted into `cuts` (the caller logs and says it), else said in a warning."""
    import warnings

    from fai_rl.sampling import render_chat

    counted = cuts if cuts is not None else Truncations("prompt", max_length)
    before = counted.rows
    out = [counted.cut_left(render_chat(tokenizer, row["prompt"])) for row in rows]
    if cuts is None and counted.rows:
        warnings.warn(f"{counted.rows - before} of {len(rows)} prompts longer than data.max_length={max_length} tokens "
                      "were cut from the left; raise data.max_length.", stacklevel=2)
    return out
