"""Cross-field and range rules on a typed recipe.

Each rule yields (dotted key, "value; why; fix"). They run after the schema check, so types are right here; they do
not touch the disk beyond a file's existence (and reading a named DeepSpeed JSON) and never import torch: a recipe is
judged before any model loads. `processes` is the world size the launch flags ask for (all nodes): some batch shapes
only fit, or not, once it is known. The algorithms' and backends' own rules are in config/algorithm_rules.py, an
evaluation recipe's in config/eval_rules.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from fai_rl.algorithms import spec_of
from fai_rl.config.deepspeed import load_deepspeed_config, offloads_params, recipe_conflicts, zero_stage
from fai_rl.config.init_from import init_from_problem
from fai_rl.config.schema import Recipe
from fai_rl.config.algorithm_rules import (
    dpo_rules,
    grpo_rules,
    placeholders,
    ppo_rules,
    sft_reward_rules,
    tinker_rules,
    workflow_rules,
)

Problem = tuple[str, str]


def check_rules(recipe: Recipe, processes: int = 1) -> list[Problem]:
    """Every cross-field / range problem of a recipe, for a launch of `processes` processes in all."""
    return [
        *_ranges(recipe),
        *_model_rules(recipe),
        *_data_rules(recipe),
        *_training_rules(recipe),
        *_deepspeed_rules(recipe),
        *dpo_rules(recipe),
        *sft_reward_rules(recipe),
        *grpo_rules(recipe, processes),
        *ppo_rules(recipe),
        *tinker_rules(recipe),
        *workflow_rules(recipe, processes),
        *_service_rules(recipe),
    ]


def _service_rules(r: Recipe) -> Iterator[Problem]:
    """wandb and S3: secrets never in a recipe; an enabled upload names its bucket."""
    if r.wandb.api_key:  # the value is never echoed
        yield "wandb.api_key", (
            "a key in a recipe is refused (the recipe is saved with the run and its logs; the value is not shown "
            "here); set WANDB_API_KEY or run `wandb login`, and leave wandb.api_key null."
        )
    s3 = r.s3
    if s3.enabled and not s3.bucket.strip():
        yield "s3.bucket", "is empty but s3.enabled is true; name the bucket to upload to (or set s3.enabled=false)."
    if s3.enabled and (s3.bucket.startswith("s3://") or "/" in s3.bucket):
        yield "s3.bucket", (f"'{s3.bucket}' is not a bucket name; give the bare name and put the path in s3.prefix "
                            "(uploads go to s3://bucket/prefix/).")
    if s3.max_retries < 0:
        yield "s3.max_retries", f"{s3.max_retries} must be 0 or more."


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
        if getattr(m, key) and not m.use_lora and r.training.backend == "local":
            yield f"model.{key}", (
                "true without LoRA: quantised weights cannot be trained directly (QLoRA needs LoRA); "
                "set model.use_lora=true."
            )
    if not m.lora_target_modules:
        yield "model.lora_target_modules", "is empty; use [all-linear] or name modules such as [q_proj, v_proj]."
    if m.torch_dtype == "float16" and r.training.bf16:
        yield "training.bf16", "true with model.torch_dtype=float16; use bfloat16 weights or set training.bf16=false."
    if r.training.fp16 and r.training.bf16:
        yield "training.fp16", "true together with training.bf16 true; pick one mixed precision (set the other false)."
    if m.use_flash_attention and m.attn_implementation is not None:
        yield "model.use_flash_attention", (
            f"true together with model.attn_implementation '{m.attn_implementation}'; keep one of them (FAI-RL's "
            "use_flash_attention picks flash_attention_2 where it can run, else sdpa)."
        )
    ex = m.lora_exclude_modules
    if ex is not None and not (isinstance(ex, str) or (isinstance(ex, list) and all(isinstance(x, str) for x in ex))):
        yield "model.lora_exclude_modules", (
            f"{ex!r} is not valid; give a list of module names, or one string (a regex over the module path).")
    for key in ("s3_region", "s3_endpoint_url"):
        if getattr(m, key) is not None and not getattr(m, key).strip():
            yield f"model.{key}", "is empty; give a value or null."
    if m.init_from is not None and r.training.backend == "local":  # Tinker's: fai_rl.backends.tinker.common
        problem = init_from_problem(m.init_from, m.base_model_name)
        if problem:
            yield "model.init_from", problem


def _data_rules(r: Recipe) -> Iterator[Problem]:
    d = r.data
    yield from _template_rules(r)
    if (spec_of(r.training.algorithm).samples_groups and d.max_prompt_length is not None
            and not 0 < d.max_prompt_length < d.max_length):  # only GRPO/GSPO read it (others: a note)
        yield "data.max_prompt_length", (
            f"{d.max_prompt_length} must be greater than 0 and less than data.max_length ({d.max_length}): the rest "
            "of max_length is the completion's share."
        )
    if d.dataset_num_proc < 1:
        yield "data.dataset_num_proc", f"{d.dataset_num_proc} must be 1 or more (processes that tokenise the data)."
    if not d.datasets:
        yield "data.datasets", "is empty; add at least one source, e.g. data.datasets[0].name=fai-rl/arithmetic."
    if d.eval_datasets and d.eval_split_ratio > 0:
        yield "data.eval_split_ratio", (
            f"{d.eval_split_ratio} together with data.eval_datasets; use one source of evaluation data "
            "(set data.eval_split_ratio=0 or remove data.eval_datasets)."
        )
    if spec_of(r.training.algorithm).data == "pairs":
        for i, ds in enumerate(d.datasets):
            if ds.chosen_column == ds.rejected_column:
                yield f"data.datasets[{i}].rejected_column", (
                    f"'{ds.rejected_column}' is also the chosen_column; DPO needs two different columns."
                )


_TEMPLATE_KEYS = ("system_prompt", "user_prompt", "assistant_prompt")


def _template_rules(r: Recipe) -> Iterator[Problem]:
    """FAI-RL's SFT templates: str.format over each source's dataset_columns, checked before any row is read.

    FAI-RL falls back to the raw template (placeholders and all) when a placeholder has no column, and trains on that
    text; here a placeholder that no listed column fills is an error naming both.
    """
    d = r.data
    if (d.user_prompt is None) != (d.assistant_prompt is None):
        have, missing = ("user_prompt", "assistant_prompt") if d.user_prompt is not None else \
            ("assistant_prompt", "user_prompt")
        yield f"data.{missing}", (
            f"is null but data.{have} is set; FAI-RL's split mode needs both templates (user turn and assistant "
            "turn, loss on the reply), or neither (data.system_prompt alone is the whole training text)."
        )
    sources = [(f"data.{w}[{i}]", spec) for w in ("datasets", "eval_datasets")
               for i, spec in enumerate(getattr(d, w))]
    templated = [(k, spec) for k, spec in sources if spec.dataset_columns]  # [] is none, as in FAI-RL
    split = d.user_prompt is not None or d.assistant_prompt is not None
    for key in _TEMPLATE_KEYS:
        template = getattr(d, key)
        if template is None or (key == "system_prompt" and not templated and not split):
            continue  # a plain system message (our meaning): braces are text
        names = placeholders(template)
        if names is None:
            yield f"data.{key}", ("is not a valid template (an unmatched { or }); write a column as {column} and a "
                                  "literal brace as {{ or }}.")
            continue
        positional = [n for n in names if n == "" or n.isdigit()]
        if positional:
            yield f"data.{key}", ("uses a positional field {} or {0}; name the column, e.g. {prompt} (a literal brace "
                                  "is {{ or }}).")
            continue
        if split and not templated:
            if names:
                yield f"data.{key}", (
                    f"uses {', '.join('{' + n + '}' for n in names)} but no data.datasets[i].dataset_columns lists "
                    "the columns that fill it; add dataset_columns: [...] to each source."
                )
            continue
        for src, spec in templated:
            missing = sorted({n.split(".")[0].split("[")[0] for n in names} - set(spec.dataset_columns))
            if missing:
                yield f"data.{key}", (
                    f"uses {', '.join('{' + n + '}' for n in missing)}, which {src}.dataset_columns "
                    f"{spec.dataset_columns} does not list (FAI-RL would train on the unfilled template); add the "
                    "column there, or write a literal brace as {{ or }}."
                )


def _training_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    has_eval = bool(r.data.eval_datasets) or r.data.eval_split_ratio > 0  # eval_steps without it: a note at load
    if not t.output_dir.strip():
        yield "training.output_dir", "is empty; name a directory for the run's artefacts, e.g. runs/my-run."
    yield from _best_model_rules(r, has_eval)


def _best_model_rules(r: Recipe, has_eval: bool) -> Iterator[Problem]:
    t = r.training
    if t.metric_for_best_model is None:
        # where HF Trainer does not run (Tinker, PPO's loop) the key-support table says the key is unread
        if t.load_best_model_at_end and t.backend == "local" and not spec_of(t.algorithm).rollout_loop:
            yield "training.load_best_model_at_end", (
                "true without training.metric_for_best_model; name the metric that picks the best checkpoint, "
                "e.g. training.metric_for_best_model=eval_loss."
            )
        return
    key = "training.metric_for_best_model"
    if t.backend == "tinker":
        yield key, (f"'{t.metric_for_best_model}': keeping the best checkpoint is not supported on the Tinker backend "
                    "(every state is listed in checkpoints.json with its step); remove it.")
        return
    workflow = getattr(r, "workflow", None)
    own_loop = spec_of(t.algorithm).rollout_loop
    if own_loop or (workflow is not None and workflow.type != "single"):
        what = t.algorithm.upper() if own_loop else f"workflow.type {workflow.type}"
        yield key, (f"'{t.metric_for_best_model}': {what} (trained by a loop written here, not HF Trainer) does not "
                    "track a best checkpoint yet; remove it.")
        return
    if not t.metric_for_best_model.strip():
        yield key, "is empty; name an eval metric such as eval_loss or eval_reward, or null."
    if not has_eval or t.eval_steps is None:
        yield key, (f"'{t.metric_for_best_model}' needs evaluations during training: set training.eval_steps and "
                    "give data.eval_datasets or data.eval_split_ratio.")
    elif t.save_steps % t.eval_steps:
        yield "training.save_steps", (
            f"{t.save_steps} is not a multiple of training.eval_steps ({t.eval_steps}): with "
            "training.metric_for_best_model the best checkpoint must be saved at an evaluation step; use e.g. "
            f"training.save_steps={t.eval_steps * max(1, round(t.save_steps / t.eval_steps))}."
        )


def _deepspeed_rules(r: Recipe) -> Iterator[Problem]:
    t, m = r.training, r.model
    if t.deepspeed_config is None or t.backend == "tinker":  # Tinker: the key-support table's note says it is unread
        return
    try:
        config = load_deepspeed_config(t.deepspeed_config)
    except ValueError as e:
        yield "training.deepspeed_config", f"{e}."
        return
    yield from recipe_conflicts(r, config)
    stage = zero_stage(config)
    quantised = "load_in_4bit" if m.load_in_4bit else "load_in_8bit" if m.load_in_8bit else None
    if quantised and stage == 3:
        yield f"model.{quantised}", (
            f"true with ZeRO-3 (training.deepspeed_config '{t.deepspeed_config}'): ZeRO-3 shards the weights, and "
            "bitsandbytes' quantised weights cannot be sharded and gathered back; use DDP (remove "
            "training.deepspeed_config) or training.deepspeed_config=zero2."
        )
    if spec_of(t.algorithm).samples_groups and t.use_vllm and t.vllm_mode == "colocate" and offloads_params(config):
        yield "training.vllm_mode", (
            f"'colocate' with '{t.deepspeed_config}', which offloads parameters to CPU: colocated vLLM is sent the "
            "full weights every step, gathered from the ZeRO-3 shards, which is not supported from offloaded "
            "parameters; use training.deepspeed_config=zero3 (no offload), or vllm_mode=server."
        )
    if spec_of(t.algorithm).rollout_loop:
        for section in ("optimizer", "scheduler"):
            if section in config:
                yield "training.deepspeed_config", (
                    f"'{t.deepspeed_config}' has a \"{section}\" section, but {t.algorithm.upper()} builds its own "
                    "AdamW and schedule from training.learning_rate and lr_scheduler_type; remove the section from "
                    "the file."
                )
