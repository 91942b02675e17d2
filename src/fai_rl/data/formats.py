"""Turn a raw row into what an algorithm trains on, or say exactly what is wrong with it.

SFT rows take one of these shapes (KINDS), chosen per source:
  split        FAI-RL's split mode (data.user_prompt and data.assistant_prompt set): [system?, user, assistant], each
               a str.format template over the row's dataset_columns; loss on the reply
  template     FAI-RL's flat mode (data.system_prompt set, the source lists dataset_columns): one plain text, the
               system_prompt template filled from those columns; loss on every token
and otherwise, detected from the source's columns (in this order):
  chat         `messages_column`: a list of {role, content}, at least one assistant turn
  completion   `prompt_column` + `answer_column`: becomes [system?, user: prompt, assistant: answer]
  text         `text_column`: plain language-modelling text
CPT rows are `text_column` documents (kind cpt), packed into blocks later (fai_rl.data.tokenize.pack_blocks).

FAI-RL (trainers/sft_trainer.py) renders a template with a missing placeholder as the literal template and trains on
it; here a dataset_columns entry the source lacks is a DataError naming the key. Rows whose rendered text is empty are
skipped and counted, as FAI-RL skips them; a null value renders as "None", as str.format (and so FAI-RL) writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fai_rl.config.schema import DataConfig, DatasetSpec
from fai_rl.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
# What --dry-run says each kind is.
KINDS = {
    "template": "FAI-RL flat template: data.system_prompt filled from dataset_columns, plain text, loss on every token",
    "split": "FAI-RL split chat: system/user/assistant templates over dataset_columns, loss on the reply",
    "chat": "chat messages",
    "completion": "prompt/completion, as a user turn and an assistant reply",
    "text": "plain text, loss on every token",
    "cpt": "continued pre-training: text_column documents, EOS after each, packed into data.max_length blocks, "
           "loss on every token",
}
# FAI-RL's documented local SFT file is {"prompt", "response"} (recipes/training/sft/llama3_3B_local_file.yaml).
FAIRL_ANSWER_COLUMN = "response"


@dataclass
class SFTExample:
    """A row in trainable form: a conversation, or plain text."""

    messages: list[dict] | None = None
    text: str | None = None
    kind: str = "chat"  # one of KINDS


def sft_format(columns: list[str], spec: DatasetSpec, key: str, data: DataConfig | None = None) -> str:
    """Which SFT shape a source has, from the recipe's templates and its columns; DataError naming the keys to set
    when none fits. Mirrors FAI-RL: split mode is recipe-wide, flat templating needs the source's dataset_columns."""
    if data is not None and data.user_prompt and data.assistant_prompt:
        return "split"
    if data is not None and data.system_prompt and spec.dataset_columns:
        return "template"
    if spec.messages_column in columns:
        return "chat"
    if spec.prompt_column in columns and spec.answer_column in columns:
        return "completion"
    if spec.text_column in columns:
        return "text"
    raise DataError(
        f"{key}: '{spec.name}' has columns [{', '.join(columns)}] but SFT needs chat messages "
        f"({key}.messages_column, now '{spec.messages_column}'), a prompt and an answer ({key}.prompt_column / "
        f"{key}.answer_column, now '{spec.prompt_column}' / '{spec.answer_column}'), or plain text "
        f"({key}.text_column, now '{spec.text_column}'); set the key that names your column."
    )


def answer_column_for(spec: DatasetSpec, columns: list[str]) -> DatasetSpec:
    """`spec`, reading FAI-RL's 'response' column as the answer when the data has no 'answer' column and the recipe left
    answer_column at its default (a recipe that names its answer column gets exactly that)."""
    default = DatasetSpec.__dataclass_fields__["answer_column"].default
    if spec.answer_column == default and default not in columns and FAIRL_ANSWER_COLUMN in columns:
        return replace(spec, answer_column=FAIRL_ANSWER_COLUMN)
    return spec


def missing_columns(rows: list[dict], names: list[str]) -> list[str]:
    """The names that no row of a source has as a column."""
    present = set().union(*(row.keys() for row in rows))
    return [n for n in names if n not in present]


def fairl_example(row: dict, spec: DatasetSpec, kind: str, data: DataConfig, key: str) -> SFTExample | None:
    """FAI-RL's templated SFT row (kind template or split), or None where FAI-RL skips it (its text is empty).

    A row without one of dataset_columns fills None (what `datasets`, and so FAI-RL, reads for a missing JSON key)."""
    values = {c: row.get(c) for c in spec.dataset_columns or ()}

    def render(name: str) -> str:
        try:
            return getattr(data, name).format(**values)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise DataError(
                f"data.{name}: cannot be filled from {key}.dataset_columns {spec.dataset_columns} "
                f"({type(e).__name__}: {e}); list the column it names there, or write a literal brace as {{{{ or }}}}."
            ) from None

    if kind == "template":
        text = render("system_prompt")
        return SFTExample(text=text, kind="template") if text.strip() else None
    user, reply = render("user_prompt"), render("assistant_prompt")
    if not user.strip() or not reply.strip():
        return None
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    if data.system_prompt:
        messages.insert(0, {"role": "system", "content": render("system_prompt")})
    return SFTExample(messages=messages, kind="split")


def to_sft_example(row: dict, spec: DatasetSpec, kind: str, system_prompt: str | None) -> SFTExample | str:
    """The trainable form of a row, or a one-line reason it cannot be used."""
    if kind == "text":
        text = row.get(spec.text_column)
        if not isinstance(text, str) or not text.strip():
            return f"'{spec.text_column}' must be non-empty text, got {short(text)}"
        return SFTExample(text=text, kind="text")
    if kind == "completion":
        prompt, answer = row.get(spec.prompt_column), row.get(spec.answer_column)
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # numeric answers (GSM8K-style data) are text to the model
        for col, value in ((spec.prompt_column, prompt), (spec.answer_column, answer)):
            if not isinstance(value, str) or not value.strip():
                return f"'{col}' must be non-empty text, got {short(value)}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return SFTExample(messages=with_system(messages, system_prompt), kind="completion")
    messages = row.get(spec.messages_column)
    problem = check_messages(messages, spec.messages_column)
    if problem:
        return problem
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return SFTExample(messages=with_system(clean, system_prompt), kind="chat")


def check_messages(messages: object, column: str, need_assistant: bool = True) -> str | None:
    """Why a messages value is not a usable conversation (None when it is)."""
    if not isinstance(messages, list) or not messages:
        return f"'{column}' must be a non-empty list of {{role, content}}, got {short(messages)}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"{column}[{i}] must be an object with 'role' and 'content', got {short(m)}"
        if m["role"] not in ROLES:
            return f"{column}[{i}].role is {m['role']!r}; use one of {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return f"{column}[{i}].content must be text, got {short(m['content'])}"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return f"'{column}' has no assistant turn, so there is nothing to learn; add one or drop the row"
    return None


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
