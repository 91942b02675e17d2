"""Turn a raw row into what an algorithm trains on, or say exactly what is wrong with it.

SFT accepts three row shapes, detected per source from its columns (in this order):
  chat         `messages_column`: a list of {role, content}, at least one assistant turn
  completion   `prompt_column` + `answer_column`: becomes [system?, user: prompt, assistant: answer]
  text         `text_column`: plain language-modelling text
"""

from __future__ import annotations

from dataclasses import dataclass

from fai_rl.config.schema import DatasetSpec
from fai_rl.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class SFTExample:
    """A row in trainable form: a conversation, or plain text."""

    messages: list[dict] | None = None
    text: str | None = None
    kind: str = "chat"  # chat | completion | text


def sft_format(columns: list[str], spec: DatasetSpec, key: str) -> str:
    """Which SFT shape a source has, from its columns; DataError naming the keys to set when none fits."""
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
