"""From `data:` in a recipe to tokenised train/eval sets, checked row by row before any model loads.

Every bad row is collected (named by file:line or name[split]:index) and reported together as one DataError. Rows
FAI-RL skips (an empty rendered template, an empty CPT document) are skipped and counted in a note instead.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from fai_rl.algorithms import spec_of
from fai_rl.config.schema import Recipe
from fai_rl.data.formats import (
    SFTExample,
    answer_column_for,
    fairl_example,
    missing_columns,
    sft_format,
    to_sft_example,
)
from fai_rl.data.sources import Source, limit_problems, load_source
from fai_rl.data.tokenize import IGNORE, Tokenized, pack_blocks, tokenize_many
from fai_rl.data.truncation import Truncations
from fai_rl.errors import DataError


@dataclass
class LengthStats:
    """Token lengths of one split, measured before truncation."""

    count: int
    min: int
    mean: float
    median: float
    p95: int
    max: int
    truncated: int  # longer than max_length
    dropped: int  # left with no loss token after truncation
    loss_tokens: int

    def line(self, max_length: int) -> str:
        return (
            f"{self.count} examples; tokens min {self.min} / mean {self.mean:.1f} / median {self.median:.0f} / "
            f"p95 {self.p95} / max {self.max}; {self.truncated} longer than data.max_length={max_length}"
            f" (truncated), {self.dropped} dropped (no loss token left); {self.loss_tokens} loss tokens"
        )


@dataclass
class SFTData:
    """Tokenised SFT data plus what --dry-run shows about it."""

    train: list[Tokenized]
    eval: list[Tokenized]
    train_stats: LengthStats
    eval_stats: LengthStats | None
    formats: dict[str, str]  # dataset key -> a kind of fai_rl.data.formats.KINDS
    samples: list[SFTExample] = field(default_factory=list)  # the first rows, for previews
    eval_examples: list[SFTExample] = field(default_factory=list)  # the held-out rows, for reward evals
    # examples (train and eval) cut to data.max_length: said in notes, logged at step 0 as truncated_rows
    truncations: Truncations | None = None
    notes: list[str] = field(default_factory=list)  # one line each: rows skipped, null values, how CPT packed
    packed: bool = False  # CPT: train/eval are max_length blocks of concatenated documents


@dataclass
class LoadedRows:
    """The rows of data.datasets (or data.eval_datasets) in trainable form, and what was noticed on the way."""

    examples: list[SFTExample]
    formats: dict[str, str]
    notes: list[str]


def load_sft_examples(recipe: Recipe, which: str = "datasets") -> tuple[list[SFTExample], dict[str, str]]:
    """Load and check every row of data.datasets (or data.eval_datasets) in SFT form."""
    loaded = load_sft_rows(recipe, which)
    return loaded.examples, loaded.formats


def load_sft_rows(recipe: Recipe, which: str = "datasets") -> LoadedRows:
    """Load and check every row in SFT form, FAI-RL's templates applied; rows FAI-RL skips are counted in notes."""
    d = recipe.data
    # FAI-RL gives system_prompt one meaning per recipe: once a source fills it from dataset_columns, it is a template,
    # and sources without dataset_columns do not get it as a system message.
    templated = any(spec.dataset_columns for spec in [*d.datasets, *d.eval_datasets])
    plain_system = None if templated else d.system_prompt
    out = LoadedRows([], {}, [])
    problems: list[str] = []
    for i, spec in enumerate(getattr(d, which)):
        source: Source = load_source(spec, f"data.{which}[{i}]")
        absent = missing_columns(source.rows, spec.dataset_columns or [])
        if absent:
            raise DataError(
                f"{source.origin(0)}: {source.key}.dataset_columns lists {', '.join(repr(c) for c in absent)}, which "
                f"'{spec.name}' does not have (its columns: {', '.join(_all_columns(source.rows))}); fix the name in "
                "dataset_columns or add the column to the data."
            )
        rows = source.rows
        if spec.dataset_columns and not (d.user_prompt and d.assistant_prompt) and not d.system_prompt:
            # dataset_columns without a template (FAI-RL: "columns to keep"): the row is read through these only
            rows = [{c: row[c] for c in spec.dataset_columns if c in row} for row in rows]
        spec = answer_column_for(spec, _all_columns(rows))
        kind = sft_format(_all_columns(rows), spec, source.key, d)
        out.formats[source.key] = kind
        if kind in ("template", "split"):
            skipped = nulls = 0
            for row in rows:
                nulls += any(row.get(c) is None for c in spec.dataset_columns or ())
                example = fairl_example(row, spec, kind, d, source.key)
                if example is None:
                    skipped += 1
                else:
                    out.examples.append(example)
            what = "text" if kind == "template" else "user or assistant text"
            if skipped:
                out.notes.append(f"{source.key}: {skipped} of {len(rows)} rows skipped: their rendered {what} is "
                                 "empty (FAI-RL skips them too).")
            if nulls:
                out.notes.append(f"{source.key}: {nulls} of {len(rows)} rows have a null or absent dataset_columns "
                                 "value, rendered as 'None' (Python's str.format, as FAI-RL renders it).")
            continue
        for j, row in enumerate(rows):
            example = to_sft_example(row, spec, kind, plain_system)
            if isinstance(example, str):
                problems.append(f"{source.origin(j)}: {example}.")
            else:
                out.examples.append(example)
    if problems:
        raise DataError(limit_problems(problems))
    return out


def load_cpt_rows(recipe: Recipe, which: str = "datasets") -> LoadedRows:
    """The documents of each source's text_column for CPT; empty or non-text values are skipped and counted, as
    FAI-RL's cpt_trainer.py skips them, and a source without the column is a DataError (FAI-RL raises there too)."""
    out = LoadedRows([], {}, [])
    for i, spec in enumerate(getattr(recipe.data, which)):
        source = load_source(spec, f"data.{which}[{i}]")
        col = spec.text_column
        if missing_columns(source.rows, [col]):
            raise DataError(
                f"{source.origin(0)}: {source.key}.text_column is '{col}', which '{spec.name}' does not have (its "
                f"columns: {', '.join(_all_columns(source.rows))}); CPT trains on the raw text of that column, so set "
                "text_column to the column that holds it."
            )
        out.formats[source.key] = "cpt"
        before = len(out.examples)
        for row in source.rows:
            text = row.get(col)
            if isinstance(text, str) and text.strip():
                out.examples.append(SFTExample(text=text, kind="cpt"))
        skipped = len(source.rows) - (len(out.examples) - before)
        if skipped:
            out.notes.append(f"{source.key}: {skipped} of {len(source.rows)} rows skipped: '{col}' is empty or not "
                             "text (FAI-RL skips them too).")
    return out


def _all_columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(c for row in rows for c in row))


def prepare_data(recipe: Recipe, tokenizer) -> SFTData:
    """The data of an SFT or CPT recipe, loaded, checked, split and tokenised."""
    return prepare_cpt_data(recipe, tokenizer) if spec_of(recipe.training.algorithm).data == "text" else \
        prepare_sft_data(recipe, tokenizer)


def _load_all(recipe: Recipe, load) -> tuple[list[SFTExample], list[SFTExample], dict[str, str], list[str]]:
    """Train and eval rows (eval held out when asked), their formats and notes; DataError when no row is left."""
    train = load(recipe, "datasets")
    eval_rows, formats, notes = [], dict(train.formats), list(train.notes)
    if recipe.data.eval_datasets:
        held = load(recipe, "eval_datasets")
        eval_rows, notes = held.examples, notes + held.notes
        formats.update(held.formats)
    if not train.examples:
        raise DataError([*notes, "data.datasets: no row is left to train on; check the data and the templates."])
    train_rows, eval_rows = split_eval(train.examples, eval_rows, recipe)
    return train_rows, eval_rows, formats, notes


def prepare_sft_data(recipe: Recipe, tokenizer) -> SFTData:
    """Load, check, split and tokenise the SFT data of a recipe."""
    train_rows, eval_rows, formats, notes = _load_all(recipe, load_sft_rows)
    # cut from the right (TRL's keep_start): the prompt stays, the reply's tail goes (fai_rl.data.truncation)
    cuts = Truncations("row", recipe.data.max_length, side="right")
    train, train_stats = _tokenize_all(train_rows, tokenizer, recipe, cuts)
    if not train:
        raise DataError(
            f"no training example keeps a loss token within data.max_length={recipe.data.max_length}; raise it."
        )
    evaluation, eval_stats = _tokenize_all(eval_rows, tokenizer, recipe, cuts) if eval_rows else ([], None)
    if (line := cuts.line("examples (train and eval)")) is not None:
        notes.append(line)
    return SFTData(train, evaluation, train_stats, eval_stats, formats, samples=train_rows[:2],
                   eval_examples=eval_rows, notes=notes, truncations=cuts)


def prepare_cpt_data(recipe: Recipe, tokenizer) -> SFTData:
    """CPT: each document tokenised whole with an EOS appended, then train and eval packed into max_length blocks.

    FAI-RL hands its text rows to TRL's SFTTrainer unpacked (each document truncated to max_length); packing trains on
    every token of a long document and wastes no padding on short ones."""
    train_docs, eval_docs, formats, notes = _load_all(recipe, load_cpt_rows)
    n = recipe.data.max_length

    def pack(docs: list[SFTExample], name: str) -> list[Tokenized]:
        tokens = tokenize_many(docs, tokenizer, "all", 2**62, recipe.data.dataset_num_proc)  # whole documents
        blocks, dropped = pack_blocks(tokens, n)
        total = sum(len(t.input_ids) for t in tokens)
        tail = f"; the last {dropped} tokens (under half a block) dropped" if dropped else ""
        notes.append(f"cpt {name}: {len(docs)} documents, {total} tokens with an EOS after each, packed into "
                     f"{len(blocks)} blocks of up to {n} tokens{tail}.")
        return blocks

    train = pack(train_docs, "train")
    evaluation = pack(eval_docs, "eval") if eval_docs else []
    return SFTData(train, evaluation, _stats(train), _stats(evaluation) if evaluation else None, formats,
                   samples=train_docs[:2], eval_examples=[], notes=notes, packed=True)


def split_eval(train_rows: list, eval_rows: list, recipe: Recipe) -> tuple[list, list]:
    """Shuffle the training rows (data.shuffle_seed) and hold out data.eval_split_ratio of them when asked."""
    if recipe.data.shuffle_seed is not None:
        train_rows = list(train_rows)
        random.Random(recipe.data.shuffle_seed).shuffle(train_rows)
    if recipe.data.eval_split_ratio <= 0:
        return train_rows, eval_rows
    order = list(range(len(train_rows)))
    random.Random(recipe.training.seed).shuffle(order)
    n_eval = max(1, round(len(train_rows) * recipe.data.eval_split_ratio))
    if n_eval >= len(train_rows):
        raise DataError(
            f"data.eval_split_ratio: {recipe.data.eval_split_ratio} of {len(train_rows)} rows leaves nothing "
            "to train on; lower it or add data."
        )
    held = set(order[:n_eval])
    return [r for k, r in enumerate(train_rows) if k not in held], [r for k, r in enumerate(train_rows) if k in held]


def _tokenize_all(rows: list[SFTExample], tokenizer, recipe: Recipe,
                  cuts: Truncations) -> tuple[list[Tokenized], LengthStats]:
    kept, lengths, truncated, dropped, loss_tokens = [], [], 0, 0, 0
    d = recipe.data
    for tok in tokenize_many(rows, tokenizer, d.loss_on, d.max_length, d.dataset_num_proc):
        lengths.append(tok.full_length)
        truncated += cuts.count(tok.full_length, len(tok.input_ids))
        n_loss = sum(label != IGNORE for label in tok.labels)
        if n_loss == 0:
            dropped += 1
            continue
        loss_tokens += n_loss
        kept.append(tok)
    return kept, _stats_of(lengths, truncated, dropped, loss_tokens)


def _stats(blocks: list[Tokenized]) -> LengthStats:
    """LengthStats of packed blocks: nothing is truncated or dropped, every token carries loss."""
    return _stats_of([len(b.input_ids) for b in blocks], 0, 0, sum(len(b.input_ids) for b in blocks))


def _stats_of(lengths: list[int], truncated: int, dropped: int, loss_tokens: int) -> LengthStats:
    ordered = sorted(lengths)
    return LengthStats(
        count=len(lengths),
        min=ordered[0],
        mean=statistics.fmean(ordered),
        median=statistics.median(ordered),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        max=ordered[-1],
        truncated=truncated,
        dropped=dropped,
        loss_tokens=loss_tokens,
    )
