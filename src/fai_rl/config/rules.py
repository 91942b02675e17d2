"""Cross-field and range rules on a typed recipe.

Each rule yields (dotted key, "value; why; fix"). They run after the schema check, so types are right here; they do
not touch the disk beyond a file's existence and never import torch: a recipe is judged before any model loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fai_rl.config.schema import Recipe

Problem = tuple[str, str]


def check_rules(recipe: Recipe) -> list[Problem]:
    """Every cross-field / range problem of a recipe."""
    return [*_ranges(recipe), *_model_rules(recipe), *_data_rules(recipe), *_training_rules(recipe)]


def _ranges(r: Recipe) -> Iterator[Problem]:
    positive = {
        "training.learning_rate": r.training.learning_rate,
        "training.num_train_epochs": r.training.num_train_epochs,
        "training.per_device_train_batch_size": r.training.per_device_train_batch_size,
        "training.per_device_eval_batch_size": r.training.per_device_eval_batch_size,
        "training.gradient_accumulation_steps": r.training.gradient_accumulation_steps,
        "training.logging_steps": r.training.logging_steps,
        "training.save_steps": r.training.save_steps,
        "model.lora_r": r.model.lora_r,
        "model.lora_alpha": r.model.lora_alpha,
        "data.max_length": r.data.max_length,
        "tinker.lora_rank": r.tinker.lora_rank,
    }
    optional_positive = {
        "training.max_steps": r.training.max_steps,
        "training.save_total_limit": r.training.save_total_limit,
        "training.eval_steps": r.training.eval_steps,
    }
    for key, value in {**positive, **optional_positive}.items():
        if value is not None and value <= 0:
            yield key, f"{value} must be greater than 0" + ("; or null." if key in optional_positive else ".")
    for key, value in {
        "training.warmup_steps": r.training.warmup_steps,
        "training.weight_decay": r.training.weight_decay,
        "training.max_grad_norm": r.training.max_grad_norm,
    }.items():
        if value < 0:
            yield key, f"{value} must be 0 or more."
    if not 0 <= r.model.lora_dropout < 1:
        yield "model.lora_dropout", f"{r.model.lora_dropout} must be in [0, 1), e.g. 0.05."
    if not 0 <= r.data.eval_split_ratio < 1:
        yield "data.eval_split_ratio", f"{r.data.eval_split_ratio} must be in [0, 1), e.g. 0.05."
    for i, ds in enumerate([*r.data.datasets, *r.data.eval_datasets]):
        key = f"data.datasets[{i}]" if i < len(r.data.datasets) else f"data.eval_datasets[{i - len(r.data.datasets)}]"
        if ds.max_samples is not None and ds.max_samples <= 0:
            yield f"{key}.max_samples", f"{ds.max_samples} must be greater than 0; or null for all rows."
        if not ds.name.strip():
            yield f"{key}.name", "is empty; name a file, a dataset dir, a hub dataset or a built-in task."


def _model_rules(r: Recipe) -> Iterator[Problem]:
    m = r.model
    if m.load_in_4bit and m.load_in_8bit:
        yield "model.load_in_8bit", "true together with model.load_in_4bit; pick one quantisation."
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(m, key) and not m.use_lora:
            yield f"model.{key}", (
                "true without LoRA: quantised weights cannot be trained directly (QLoRA needs LoRA); "
                "set model.use_lora=true."
            )
        if getattr(m, key) and r.training.backend == "tinker":
            yield f"model.{key}", "has no meaning on the Tinker backend (the service holds the weights); remove it."
    if not m.lora_target_modules:
        yield "model.lora_target_modules", "is empty; use [all-linear] or name modules such as [q_proj, v_proj]."
    if m.torch_dtype == "float16" and r.training.bf16:
        yield "training.bf16", "true with model.torch_dtype=float16; use bfloat16 weights or set training.bf16=false."


def _data_rules(r: Recipe) -> Iterator[Problem]:
    d = r.data
    if not d.datasets:
        yield "data.datasets", "is empty; add at least one source, e.g. data.datasets[0].name=fai-rl/arithmetic."
    if d.eval_datasets and d.eval_split_ratio > 0:
        yield "data.eval_split_ratio", (
            f"{d.eval_split_ratio} together with data.eval_datasets; use one source of evaluation data "
            "(set data.eval_split_ratio=0 or remove data.eval_datasets)."
        )
    if r.training.algorithm == "dpo":
        for i, ds in enumerate(d.datasets):
            if ds.chosen_column == ds.rejected_column:
                yield f"data.datasets[{i}].rejected_column", (
                    f"'{ds.rejected_column}' is also the chosen_column; DPO needs two different columns."
                )


def _training_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    has_eval = bool(r.data.eval_datasets) or r.data.eval_split_ratio > 0
    if t.eval_steps is not None and not has_eval:
        yield "training.eval_steps", (
            f"{t.eval_steps} but there is no evaluation data; add data.eval_datasets or set data.eval_split_ratio."
        )
    if not t.output_dir.strip():
        yield "training.output_dir", "is empty; name a directory for the run's artefacts, e.g. runs/my-run."
    if t.deepspeed_config is not None:
        if t.backend == "tinker":
            yield "training.deepspeed_config", "is set but the Tinker backend does not use DeepSpeed; remove it."
        elif not Path(t.deepspeed_config).is_file():
            yield "training.deepspeed_config", (
                f"'{t.deepspeed_config}' does not exist; give the path of a DeepSpeed JSON config."
            )
    if t.optim in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit"):
        if t.backend == "tinker":
            yield "training.optim", f"'{t.optim}' has no meaning on the Tinker backend (it uses Adam); remove it."
