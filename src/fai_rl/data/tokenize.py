"""Tokenise conversations with the model's own chat template and mark which tokens carry the loss.

We build `input_ids` + `labels` ourselves (TRL's SFTTrainer takes pre-tokenised data as is) so that `--dry-run` shows
exactly the tokens and the loss mask that training will use, for any chat template. The mask is found on the rendered
text, then mapped to tokens through the fast tokenizer's offsets:
  assistant turn i spans from the end of render(messages[:i], add_generation_prompt=True) to the end of
  render(messages[:i+1]), so it covers the reply *and* its end-of-turn token (the model must learn to stop).
Templates that re-render history differently (so the prefix property fails) fall back to locating the reply text.

CPT documents are tokenised as plain text (EOS appended), concatenated and cut into max_length blocks (pack_blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from fai_rl.data.formats import SFTExample
from fai_rl.errors import DataError

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    full_length: int  # before truncation


def tokenize_sft(example, tokenizer, loss_on: str, max_length: int) -> Tokenized:
    """input_ids and labels of one SFTExample, truncated to max_length."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = render_with_loss_spans(example.messages, tokenizer, loss_on)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [
            tok if any(s < span_end and e > span_start for span_start, span_end in spans) else IGNORE
            for tok, (s, e) in zip(ids, enc["offset_mapping"], strict=True)
        ]
    return Tokenized(input_ids=ids[:max_length], labels=labels[:max_length], full_length=len(ids))


def tokenize_many(examples: list, tokenizer, loss_on: str, max_length: int, num_proc: int = 1) -> list[Tokenized]:
    """tokenize_sft over many examples, in `num_proc` processes (datasets.map) when asked; the same result as one."""
    if num_proc <= 1 or len(examples) < 2 * num_proc:
        return [tokenize_sft(e, tokenizer, loss_on, max_length) for e in examples]
    from datasets import Dataset

    def tokenize_row(row: dict) -> dict:
        t = tokenize_sft(SFTExample(messages=row["messages"], text=row["text"]), tokenizer, loss_on, max_length)
        return {"input_ids": t.input_ids, "labels": t.labels, "full_length": t.full_length}

    # messages are cleaned to {role, content} when loaded, so they survive the trip through Arrow unchanged
    rows = Dataset.from_dict({"messages": [e.messages for e in examples], "text": [e.text for e in examples]})
    done = rows.map(tokenize_row, num_proc=num_proc, remove_columns=rows.column_names, desc="tokenising")
    return [Tokenized(r["input_ids"], r["labels"], r["full_length"]) for r in done]


def pack_blocks(documents: list[Tokenized], max_length: int) -> tuple[list[Tokenized], int]:
    """Concatenate the documents' tokens and cut them into blocks of max_length, every token carrying loss.

    The last, partial block is kept when it holds at least half of max_length tokens or is the only block (a corpus
    shorter than one block still trains); otherwise its tokens are dropped. Returns (blocks, tokens dropped).
    """
    stream = [tok for doc in documents for tok in doc.input_ids]
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    dropped = 0
    if len(blocks) > 1 and len(blocks[-1]) < max_length / 2:
        dropped = len(blocks.pop())
    return [Tokenized(input_ids=b, labels=list(b), full_length=len(b)) for b in blocks], dropped


def render_with_loss_spans(messages: list[dict], tokenizer, loss_on: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered by the chat template, and the character spans that carry loss."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template, so chat rows cannot be rendered; "
            "use an instruct/chat model, or give the data as plain text (data.datasets[i].text_column)."
        )
    full = _render(tokenizer, messages)
    if loss_on == "all":
        return full, [(0, len(full))]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on in ("last_assistant", "completion"):
        turns = turns[-1:]
    spans, cursor, done = [], 0, 0
    for i in turns:
        span = _prefix_span(tokenizer, messages, i, full)
        if span is None:
            for m in messages[done:i]:  # search past the turns before the reply, so a copy of it in them is not hit
                at = full.find(m["content"], cursor) if m["content"] else -1
                cursor = at + len(m["content"]) if at >= 0 else cursor
            span = _search_span(tokenizer, messages[i]["content"], full, cursor)
        spans.append(span)
        cursor, done = span[1], i + 1
    return full, spans


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _prefix_span(tokenizer, messages: list[dict], i: int, full: str) -> tuple[int, int] | None:
    if i == 0:  # nothing to render before a conversation's first turn (a prefix of "" would put its header in the loss)
        return None
    try:
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = full if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1])
    except Exception:  # some templates refuse a conversation that does not end with a user turn
        return None
    if full.startswith(upto) and upto.startswith(prefix) and len(upto) > len(prefix):
        return len(prefix), len(upto)
    return None


def _search_span(tokenizer, content: str, full: str, cursor: int) -> tuple[int, int]:
    start = full.find(content, cursor)
    if start < 0:
        raise DataError(
            f"the chat template of {tokenizer.name_or_path} does not reproduce an assistant reply verbatim, so the "
            "loss mask cannot be placed; set data.loss_on=all or use a model whose template keeps replies as given."
        )
    end = start + len(content)
    eos = tokenizer.eos_token or ""
    after = full[end:]
    if eos and after.lstrip(" ").startswith(eos):  # train the end-of-turn token too
        end += len(after) - len(after.lstrip(" ")) + len(eos)
    return start, end
