"""Cross-field and range rules on a typed recipe.

Each rule yields (dotted key, "value; why; fix"). They run after the schema check, so types are right here; they do
not touch the disk beyond a file's existence and never import torch: a recipe is judged before any model loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

from fai_rl.config.schema import DPO_LOSSES, Recipe

Problem = tuple[str, str]


def check_rules(recipe: Recipe) -> list[Problem]:
    """Every cross-field / range problem of a recipe."""
    return [
        *_ranges(recipe),
        *_model_rules(recipe),
        *_data_rules(recipe),
        *_training_rules(recipe),
        *_dpo_rules(recipe),
        *_grpo_rules(recipe),
        *_ppo_rules(recipe),
    ]


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


def _dpo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.algorithm != "dpo":
        return
    for i, loss in enumerate(t.dpo_loss_type):
        if loss not in DPO_LOSSES:
            near = difflib.get_close_matches(loss, DPO_LOSSES, n=1)
            hint = f"did you mean '{near[0]}'?" if near else "use one of " + ", ".join(DPO_LOSSES) + "."
            yield f"training.dpo_loss_type[{i}]", f"'{loss}' is not a DPO loss; {hint}"
    if not t.dpo_loss_type:
        yield "training.dpo_loss_type", "is empty; use [sigmoid] (the DPO paper's loss)."
    if t.dpo_loss_weights is not None and len(t.dpo_loss_weights) != len(t.dpo_loss_type):
        yield "training.dpo_loss_weights", (
            f"has {len(t.dpo_loss_weights)} weights for {len(t.dpo_loss_type)} losses in training.dpo_loss_type; "
            "give one weight per loss."
        )
    if not 0 <= t.label_smoothing < 0.5:
        yield "training.label_smoothing", f"{t.label_smoothing} must be in [0, 0.5)."
    if t.beta is not None and t.beta <= 0:
        yield "training.beta", f"{t.beta} must be greater than 0 for DPO (it scales the implicit reward), e.g. 0.1."


def _sampling_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.temperature <= 0:
        yield "training.temperature", f"{t.temperature} must be greater than 0 (sampling needs it), e.g. 1.0."
    if not 0 < t.top_p <= 1:
        yield "training.top_p", f"{t.top_p} must be in (0, 1]."
    if t.max_completion_length <= 0:
        yield "training.max_completion_length", f"{t.max_completion_length} must be greater than 0, e.g. 256."
    if not r.rewards and not (t.algorithm == "ppo" and r.model.reward_model_name):
        yield "rewards", (
            f"is empty, but {t.algorithm} learns from rewards; add e.g. rewards[0].function=exact_match"
            + (" or set model.reward_model_name." if t.algorithm == "ppo" else ".")
        )


def _grpo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.algorithm not in ("grpo", "gspo"):
        return
    yield from _sampling_rules(r)
    if t.num_generations < 2:
        yield "training.num_generations", f"{t.num_generations} must be at least 2: advantages compare a group."
    else:
        steps = t.steps_per_generation or t.gradient_accumulation_steps
        batch = t.per_device_train_batch_size * steps
        if batch % t.num_generations:
            yield "training.num_generations", (
                f"{t.num_generations} does not divide the generation batch of {batch} completions "
                f"(per_device_train_batch_size {t.per_device_train_batch_size} x "
                f"{'steps_per_generation' if t.steps_per_generation else 'gradient_accumulation_steps'} {steps}); "
                "make the batch a multiple of num_generations."
            )
    has_eval = bool(r.data.eval_datasets) or r.data.eval_split_ratio > 0
    eval_group = t.num_generations if t.num_generations_eval is None else t.num_generations_eval
    if t.num_generations_eval is not None and t.num_generations_eval < 1:
        yield "training.num_generations_eval", f"{t.num_generations_eval} must be at least 1 (or null: num_generations)."
    elif has_eval and eval_group >= 1 and t.per_device_eval_batch_size % eval_group:
        key = "num_generations" if t.num_generations_eval is None else "num_generations_eval"
        yield "training.per_device_eval_batch_size", (
            f"{t.per_device_eval_batch_size} is not a multiple of training.{key} ({eval_group}); "
            "evaluation samples whole groups too: use a multiple of it."
        )
    if t.epsilon is not None and t.epsilon <= 0:
        yield "training.epsilon", f"{t.epsilon} must be greater than 0."
    if t.beta is not None and t.beta < 0:
        yield "training.beta", f"{t.beta} must be 0 (no reference model) or more."
    if t.num_iterations < 1:
        yield "training.num_iterations", f"{t.num_iterations} must be at least 1."
    if t.algorithm == "gspo":
        if t.importance_sampling_level == "token":
            yield "training.importance_sampling_level", (
                "'token' turns GSPO into GRPO; use training.algorithm=grpo, or leave it null (sequence)."
            )
        if t.loss_type not in (None, "grpo", "dr_grpo", "bnpo"):
            yield "training.loss_type", (
                f"'{t.loss_type}' does not fit GSPO's sequence-level ratios (it normalises per token or reweights "
                "ratios); use grpo (GSPO's default), dr_grpo or bnpo."
            )


def _ppo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.algorithm != "ppo":
        return
    yield from _sampling_rules(r)
    for key in ("gamma", "lam"):
        if not 0 <= getattr(t, key) <= 1:
            yield f"training.{key}", f"{getattr(t, key)} must be in [0, 1]."
    for key in ("cliprange", "cliprange_value", "vf_coef"):
        if getattr(t, key) <= 0:
            yield f"training.{key}", f"{getattr(t, key)} must be greater than 0."
    if t.kl_coef < 0:
        yield "training.kl_coef", f"{t.kl_coef} must be 0 or more."
    if t.num_ppo_epochs < 1:
        yield "training.num_ppo_epochs", f"{t.num_ppo_epochs} must be at least 1."
    if t.num_mini_batches < 1 or t.per_device_train_batch_size % max(1, t.num_mini_batches):
        yield "training.num_mini_batches", (
            f"{t.num_mini_batches} must be at least 1 and divide per_device_train_batch_size "
            f"({t.per_device_train_batch_size})."
        )
    # Keys the local PPO (written here, not TRL) cannot honour.
    if t.optim not in ("adamw_torch", "adamw_torch_fused"):
        yield "training.optim", f"'{t.optim}' is not offered by PPO, which uses torch AdamW; set training.optim=adamw_torch."
    if t.gradient_accumulation_steps != 1:
        yield "training.gradient_accumulation_steps", (
            f"{t.gradient_accumulation_steps} has no meaning for PPO (each step makes num_ppo_epochs x "
            "num_mini_batches updates); set it to 1 and use training.num_mini_batches."
        )
    if t.deepspeed_config is not None:
        yield "training.deepspeed_config", (
            f"{t.deepspeed_config!r}: PPO runs under plain DDP (accelerate) and does not gather ZeRO shards for its "
            "checkpoints yet; remove it (LoRA or a smaller critic save memory)."
        )
