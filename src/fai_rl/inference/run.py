"""FAI-RL's inference pass (inference/inference.py run_inference), on fai-rl's engines.

Per row, `system_prompt` is filled from the row's columns with str.format (MMLU's `choices` list first written as
'A. ...' lines, as FAI-RL does for cais/mmlu). Flat mode (no user_prompt): that text is the whole prompt, tokenised as
it is (FAI-RL sends it to the tokenizer without a chat template) and, for an API, the one user message. Chat mode
(user_prompt set): a system turn and a user turn, through the chat template. Local models generate in batches with
fai_rl.sampling.generate_local (the graph decoder on a GPU); API models through fai_rl.inference.api. Output rows are
FAI-RL's: the dataset_columns, the checkpoint column when there are several models, then the response column.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fai_rl.errors import DataError, UsageError

DEFAULT_CHOICE_LABELS = list("ABCDEFGHIJ")
FILE_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class InferenceResult:
    """What a pass produced: output rows (failures left out), and per model the row indices that failed and why."""

    rows: list[dict] = field(default_factory=list)
    failed: dict[str, dict[int, str]] = field(default_factory=dict)
    responses: dict[str, list[str | None]] = field(default_factory=dict)  # model name -> reply per dataset row


def load_rows(c, what: str) -> list[dict]:
    """The dataset's rows as dicts: a local file by extension, else the hub (name, subset; split, or the first)."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    path = Path(c.dataset_name).expanduser()
    try:
        if path.suffix.lower() in FILE_FORMATS:
            if not path.is_file():
                raise DataError(f"{what}.dataset_name: no such file: {c.dataset_name}")
            data = load_dataset(FILE_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
        else:
            found = load_dataset(c.dataset_name, c.dataset_subset) if c.dataset_subset else load_dataset(c.dataset_name)
            data = found[c.dataset_split] if c.dataset_split in found else found[list(found)[0]]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, unknown id, bad file: one line naming the key
        raise DataError(f"{what}.dataset_name: cannot load '{c.dataset_name}' ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); give a hub id or a local file.") from None
    rows = [dict(r) for r in data]
    missing = [col for col in c.dataset_columns if rows and col not in rows[0]]
    if missing:
        raise DataError(f"{what}.dataset_columns: {missing} not in {c.dataset_name} (its columns: "
                        f"{sorted(rows[0])}); name columns it has.")
    return rows


def format_choices(choices, labels: list[str] | None) -> str:
    """MMLU's choices as 'A. text' lines (a string holding a Python list is read as one, safely)."""
    import ast

    labels = labels or DEFAULT_CHOICE_LABELS
    if isinstance(choices, str):
        try:
            parsed = ast.literal_eval(choices)
            choices = parsed if isinstance(parsed, (list, tuple)) else [choices]
        except (ValueError, SyntaxError):
            choices = [part.strip() for part in choices.split(",")]
    return "\n".join(f"{labels[i]}. {ch}" if i < len(labels) else f"{i + 1}. {ch}" for i, ch in enumerate(choices))


def conversations(c, rows: list[dict], what: str, mmlu: bool = False) -> list[list[dict]]:
    """Each row's prompt as messages: flat mode one user message, chat mode system (if any) + user."""
    out = []
    for i, row in enumerate(rows):
        values = dict(row)
        if mmlu and "choices" in values:
            values["choices"] = format_choices(values["choices"], c.choice_labels)
        try:
            if c.user_prompt:
                turns = [{"role": "system", "content": c.system_prompt.format(**values)}] if c.system_prompt else []
                out.append([*turns, {"role": "user", "content": c.user_prompt.format(**values)}])
            else:
                out.append([{"role": "user", "content": c.system_prompt.format(**values)}])
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"{what}.system_prompt/user_prompt: row {i}: cannot fill the template ({type(e).__name__}"
                            f": {e}); use {{column}} names of the dataset and double literal braces ({{{{ }}}}).") \
                from None
    return out


def model_names(c) -> list[str]:
    """The models of the pass, in order: model_paths, else model."""
    return list(c.model_paths) if c.model_paths else [c.model]


def sampling_knobs(c) -> dict:
    """temperature / top_p / max tokens as generated: do_sample false (or temperature 0) is greedy."""
    temperature = c.temperature if c.do_sample else 0.0
    return {"temperature": temperature, "top_p": c.top_p if temperature > 0 else 1.0, "max_tokens": c.max_new_tokens}


def run_pass(c, rows: list[dict], what: str, log=print, mmlu: bool = False) -> InferenceResult:
    """Generate every row's reply with every model; failures (API rows after retries) are listed, not fatal."""
    convs = conversations(c, rows, what, mmlu)
    knobs = sampling_knobs(c)
    names = model_names(c)
    result = InferenceResult()
    for name in names:
        if c.api_endpoint:
            from fai_rl.inference.api import ask_all, open_chat_client

            ask = open_chat_client(c.api_endpoint, c.model, max_retries=c.api_max_retries, timeout_s=c.api_timeout_s)
            log(f"{what}: {len(convs)} rows through {c.api_endpoint} ({c.model}), {c.api_concurrency} at a time")
            replies, failed = ask_all(ask, convs, concurrency=c.api_concurrency, **knobs)
        else:
            replies, failed = _local_replies(c, name, convs, knobs, what, log), {}
        result.responses[name] = replies
        result.failed[name] = failed
        for i, (row, reply) in enumerate(zip(rows, replies, strict=True)):
            if i in failed:
                continue
            out = {col: row.get(col, "") for col in c.dataset_columns}
            if len(names) > 1:
                out[c.checkpoint_column] = name
            out[c.response_column] = reply
            result.rows.append(out)
    return result


def _local_replies(c, name: str, convs: list[list[dict]], knobs: dict, what: str, log) -> list[str]:
    from fai_rl.evaluation.samplers import open_sampler, render_chat
    from fai_rl.models.source import resolve_model_source

    source = resolve_model_source(name, what=f"{what}.model_paths" if c.model_paths else f"{what}.model")
    if source.kind == "tinker":
        raise UsageError(f"{what}: {name} is a Tinker path; give a local model or an api_endpoint.")
    log(f"{what}: {source.describe()}, {len(convs)} rows")
    sampler = open_sampler(source, device=c.device, batch_size=c.batch_size)
    tok = sampler.tokenizer
    prompts = [render_chat(tok, m) if c.user_prompt else tok(m[0]["content"])["input_ids"] for m in convs]
    groups = sampler.generate(prompts, n=1, temperature=knobs["temperature"], top_p=knobs["top_p"],
                              max_new_tokens=knobs["max_tokens"], seed=c.seed)
    del sampler
    return [g[0].text for g in groups]


def output_columns(c) -> list[str]:
    """The output file's columns, in FAI-RL's order."""
    return [*c.dataset_columns, *([c.checkpoint_column] if len(model_names(c)) > 1 else []), c.response_column]


def write_rows(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """CSV (every field quoted, as FAI-RL's pandas QUOTE_ALL; `columns` head it even with no rows) or JSONL, written
    to a temporary file and renamed."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        columns = list(dict.fromkeys([*(columns or []), *(k for r in rows for k in r)]))
        writer = csv.DictWriter(buf, fieldnames=columns, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(r.get(k, "")) for k in columns} for r in rows)
        text = buf.getvalue()
    write_atomic(path, text)
    return path


def write_atomic(path: Path, text: str) -> None:
    """path gets text whole or not at all (a partial file is renamed into place only when complete)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(value):
    return "" if value is None else (str(list(value)) if isinstance(value, (list, tuple)) else value)
