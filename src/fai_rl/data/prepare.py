"""From `data:` in a recipe to tokenised train/eval sets, checked row by row before any model loads.

Every bad row is collected (named by file:line or name[split]:index) and reported together as one DataError.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from fai_rl.config.schema import Recipe
from fai_rl.data.formats import SFTExample, sft_format, to_sft_example
from fai_rl.data.sources import Source, limit_problems, load_source
from fai_rl.data.tokenize import IGNORE, Tokenized, tokenize_sft
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
    formats: dict[str, str]  # dataset key -> chat | completion | text
    samples: list[SFTExample] = field(default_factory=list)  # the first rows, for previews
    eval_examples: list[SFTExample] = field(default_factory=list)  # the held-out rows, for reward evals


def load_sft_examples(recipe: Recipe, which: str = "datasets") -> tuple[list[SFTExample], dict[str, str]]:
    """Load and check every row of data.datasets (or data.eval_datasets) in SFT form."""
    examples: list[SFTExample] = []
    formats: dict[str, str] = {}
    problems: list[str] = []
    for i, spec in enumerate(getattr(recipe.data, which)):
        source: Source = load_source(spec, f"data.{which}[{i}]")
        kind = sft_format(source.columns, spec, source.key)
        formats[source.key] = kind
        for j, row in enumerate(source.rows):
            out = to_sft_example(row, spec, kind, recipe.data.system_prompt)
            if isinstance(out, str):
                problems.append(f"{source.origin(j)}: {out}.")
            else:
                examples.append(out)
    if problems:
        raise DataError(limit_problems(problems))
    return examples, formats


def prepare_sft_data(recipe: Recipe, tokenizer) -> SFTData:
    """Load, check, split and tokenise the SFT data of a recipe."""
    train_rows, formats = load_sft_examples(recipe, "datasets")
    eval_rows: list[SFTExample] = []
    if recipe.data.eval_datasets:
        eval_rows, eval_formats = load_sft_examples(recipe, "eval_datasets")
        formats.update(eval_formats)
    train_rows, eval_rows = split_eval(train_rows, eval_rows, recipe)
    train, train_stats = _tokenize_all(train_rows, tokenizer, recipe)
    if not train:
        raise DataError(
            f"no training example keeps a loss token within data.max_length={recipe.data.max_length}; raise it."
        )
    evaluation, eval_stats = _tokenize_all(eval_rows, tokenizer, recipe) if eval_rows else ([], None)
    return SFTData(train, evaluation, train_stats, eval_stats, formats, samples=train_rows[:2],
                   eval_examples=eval_rows)


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


def _tokenize_all(rows: list[SFTExample], tokenizer, recipe: Recipe) -> tuple[list[Tokenized], LengthStats]:
    kept, lengths, truncated, dropped, loss_tokens = [], [], 0, 0, 0
    for row in rows:
        tok = tokenize_sft(row, tokenizer, recipe.data.loss_on, recipe.data.max_length)
        lengths.append(tok.full_length)
        truncated += tok.full_length > recipe.data.max_length
        n_loss = sum(label != IGNORE for label in tok.labels)
        if n_loss == 0:
            dropped += 1
            continue
        loss_tokens += n_loss
        kept.append(tok)
    ordered = sorted(lengths)
    stats = LengthStats(
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
    return kept, stats
