"""Direct Preference Optimization on the local backend, through TRL's DPOTrainer.

DPO (Rafailov et al., 2023) trains the policy directly on preference pairs: the loss raises the log-ratio of the
chosen over the rejected reply, each measured against a frozen reference, scaled by `beta`. `training.dpo_loss_type`
picks the paper's sigmoid loss or a variant TRL offers (ipo, hinge, robust, ...), several at once with
`dpo_loss_weights`. With LoRA the reference is the policy with its adapter disabled, so there is no second copy of
the model; with a full fine-tune TRL keeps a frozen copy (`precompute_ref_log_probs` frees it after one pass).
With `training.padding_free` (on by default where a varlen attention kernel exists) every batch's chosen and rejected
sequences run as one padding-free row (dpo_packed.PackedDPOTrainer): the same log-probs, losses and gradients.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from fai_rl.artifacts import RunDir
from fai_rl.backends.local.common import (
    check_precision,
    MetricsCallback,
    ResumePoint,
    find_resume_point,
    quiet_progress_bars,
    run_trainer,
    trainer_arguments,
)
from fai_rl.config.schema import Recipe
from fai_rl.backends.local.sft import TruncationsLogged
from fai_rl.data.rl import load_preference_rows
from fai_rl.data.truncation import Truncations
from fai_rl.models.load import load_causal_lm, load_tokenizer, lora_config, quantization_config, use_padding_free


@dataclass
class PreparedDPO:
    tokenizer: object
    train: list[dict]
    eval: list[dict]
    resume: ResumePoint | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedDPO:
    """Tokenizer, checked preference pairs and the resume point; nothing is written."""
    check_precision(recipe)  # fp16 without a GPU: said before anything is loaded or written
    resume_point = find_resume_point(recipe, resume)
    quantization_config(recipe.model)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_preference_rows(recipe)
    return PreparedDPO(tokenizer, train, evaluation, resume_point)


def describe(recipe: Recipe, prepared: PreparedDPO) -> str:
    """Pair counts, lengths against data.max_length, and two pairs rendered through the chat template."""
    tok, max_length = prepared.tokenizer, recipe.data.max_length
    lengths = [len(_ids(tok, row["prompt"] + row[side])) for row in prepared.train for side in ("chosen", "rejected")]
    t = recipe.training
    lines = [
        f"train: {len(prepared.train)} pairs; eval: {len(prepared.eval)} pairs",
        f"prompt+reply tokens: min {min(lengths)} / median {statistics.median(lengths):.0f} / max {max(lengths)}; "
        f"{sum(n > max_length for n in lengths)} longer than data.max_length={max_length} (truncated)",
        f"loss: {' + '.join(t.dpo_loss_type)} with beta {t.beta}"
        + (f", weights {t.dpo_loss_weights}" if t.dpo_loss_weights else "")
        + f"; reference: {'the adapter-disabled policy' if recipe.model.use_lora else 'a frozen copy of the model'}",
    ]
    for n, row in enumerate(prepared.train[:2], start=1):
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        lines += [
            f"--- pair {n}",
            "prompt:   " + prompt.replace("\n", "\\n"),
            "chosen:   " + row["chosen"][0]["content"].replace("\n", "\\n"),
            "rejected: " + row["rejected"][0]["content"].replace("\n", "\\n"),
        ]
    if prepared.resume is not None:
        lines.append(f"resume: from {prepared.resume.path} (step {prepared.resume.step})")
    return "\n".join(lines)


def _ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)


def train(recipe: Recipe, prepared: PreparedDPO, run: RunDir, callbacks: list | None = None) -> dict | None:
    """Train with DPOTrainer (held-out preference accuracy before and after); summary on the main process."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from fai_rl.backends.local.dpo_packed import PackedDPOTrainer

    quiet_progress_bars()
    t = recipe.training
    padding_free = use_padding_free(recipe)
    has_eval = bool(prepared.eval)
    args = DPOConfig(
        **trainer_arguments(recipe, has_eval),
        beta=t.beta,
        loss_type=list(t.dpo_loss_type),
        loss_weights=list(t.dpo_loss_weights) if t.dpo_loss_weights else None,
        label_smoothing=t.label_smoothing,
        precompute_ref_log_probs=t.precompute_ref_log_probs,
        max_length=recipe.data.max_length,
        dataset_num_proc=recipe.data.dataset_num_proc,  # TRL tokenises the pairs with datasets.map
    )
    trainer = (PackedDPOTrainer if padding_free else DPOTrainer)(
        model=load_causal_lm(recipe.model, padding_free=padding_free),
        args=args,
        train_dataset=Dataset.from_list(prepared.train),
        eval_dataset=Dataset.from_list(prepared.eval) if has_eval else None,
        processing_class=prepared.tokenizer,
        peft_config=lora_config(recipe.model),
        callbacks=[MetricsCallback(run), *(callbacks or [])],  # extra: e.g. scripts/bench.py's step timer
    )
    cuts = pairs_cut(trainer, len(prepared.train) + len(prepared.eval), recipe.data.max_length)
    if trainer.is_world_process_zero():
        cuts.report("preference pairs (train and eval)")
    trainer.add_callback(TruncationsLogged(run, cuts))  # truncated_pairs at step 0
    return run_trainer(trainer, recipe, prepared.tokenizer, prepared.resume, run, has_eval)


def pairs_cut(trainer, rows: int, max_length: int) -> Truncations:
    """What TRL's DPOTrainer cuts (keep_start: each prompt + reply to its first max_length tokens) and leaves out
    (pairs whose prompt alone fills max_length), read from the datasets it tokenised."""
    cuts = Truncations("pair", max_length, side="right")
    kept = 0
    for ds in (trainer.train_dataset, trainer.eval_dataset):
        if ds is None:
            continue
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True):
            kept_tokens = min(len(p) + len(c), max_length) + min(len(p) + len(r), max_length)
            cuts.count(2 * len(p) + len(c) + len(r), kept_tokens)
        kept += len(ds)
    cuts.left_out = rows - kept
    return cuts
