"""Supervised fine-tuning on the local backend, through TRL's SFTTrainer.

Full fine-tune, LoRA (peft) and QLoRA (bitsandbytes 4-bit + LoRA) from the same recipe keys. Departure from plain TRL:
we tokenise and mask the data ourselves (fai_rl.data.tokenize) and hand SFTTrainer `input_ids` + `labels`, so the
loss mask `--dry-run` prints is exactly the one trained on, for any chat template and any `data.loss_on` choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from fai_rl.artifacts import RunDir
from fai_rl.backends.local.common import (
    MetricsCallback,
    ResumePoint,
    find_resume_point,
    quiet_progress_bars,
    run_trainer,
    trainer_arguments,
)
from fai_rl.config.schema import Recipe
from fai_rl.data.prepare import SFTData, prepare_sft_data
from fai_rl.data.tokenize import IGNORE, tokenize_sft
from fai_rl.models.load import load_causal_lm, load_tokenizer, lora_config, quantization_config


@dataclass
class PreparedSFT:
    tokenizer: object
    data: SFTData
    resume: ResumePoint | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedSFT:
    """Tokenizer, checked and tokenised data, and the resume point; nothing is written."""
    resume_point = find_resume_point(recipe, resume)
    quantization_config(recipe.model)  # a missing bitsandbytes is reported now, before output_dir is touched
    tokenizer = load_tokenizer(recipe.model)
    return PreparedSFT(tokenizer=tokenizer, data=prepare_sft_data(recipe, tokenizer), resume=resume_point)


def describe(recipe: Recipe, prepared: PreparedSFT) -> str:
    """Two examples through the chat template with the loss-carrying text in [[ ]], and token statistics."""
    d, tok = prepared.data, prepared.tokenizer
    lines = [f"data formats: {', '.join(f'{k} = {v}' for k, v in d.formats.items())}"]
    lines.append(f"train: {d.train_stats.line(recipe.data.max_length)}")
    if d.eval_stats is not None:
        lines.append(f"eval:  {d.eval_stats.line(recipe.data.max_length)}")
    lines.append(f"loss on: {recipe.data.loss_on} (text inside [[ ]] carries loss; newlines shown as \\n)")
    for n, example in enumerate(d.samples, start=1):
        t = tokenize_sft(example, tok, recipe.data.loss_on, recipe.data.max_length)
        n_loss = sum(label != IGNORE for label in t.labels)
        lines.append(f"--- example {n} ({example.kind}; {len(t.input_ids)} tokens, {n_loss} carry loss)")
        lines.append(_mark_loss(t.input_ids, t.labels, tok))
    if prepared.resume is not None:
        lines.append(f"resume: from {prepared.resume.path} (step {prepared.resume.step})")
    return "\n".join(lines)


def _mark_loss(ids: list[int], labels: list[int], tokenizer) -> str:
    out, current, in_loss = [], [], False
    for tok_id, label in [*zip(ids, labels, strict=True), (None, None)]:
        loss = label is not None and label != IGNORE
        if tok_id is None or loss != in_loss:
            text = tokenizer.decode(current).replace("\n", "\\n")
            out.append(f"[[{text}]]" if in_loss and current else text)
            current, in_loss = [], loss
        if tok_id is not None:
            current.append(tok_id)
    return "".join(out)


def train(recipe: Recipe, prepared: PreparedSFT, run: RunDir, callbacks: list | None = None) -> dict | None:
    """Train with SFTTrainer, evaluate before and after, write final/; returns the summary (main process only)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    quiet_progress_bars()
    d = prepared.data
    has_eval = bool(d.eval)

    def as_dataset(rows):
        return Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]})

    args = SFTConfig(
        **trainer_arguments(recipe, has_eval),
        max_length=recipe.data.max_length,
        packing=recipe.training.packing,
        completion_only_loss=False,  # the labels we built already hold the mask
    )
    trainer = SFTTrainer(
        model=load_causal_lm(recipe.model),
        args=args,
        train_dataset=as_dataset(d.train),
        eval_dataset=as_dataset(d.eval) if has_eval else None,
        processing_class=prepared.tokenizer,
        peft_config=lora_config(recipe.model),
        callbacks=[MetricsCallback(run), *(callbacks or [])],  # extra: e.g. scripts/bench.py's step timer
    )
    return run_trainer(trainer, recipe, prepared.tokenizer, prepared.resume, run, has_eval)
