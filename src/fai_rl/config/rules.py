"""Cross-field and range rules on a typed recipe.

Each rule yields (dotted key, "value; why; fix"). They run after the schema check, so types are right here; they do
not touch the disk beyond a file's existence (and reading a named DeepSpeed JSON) and never import torch: a recipe is
judged before any model loads. `processes` is the world size the launch flags ask for (all nodes): some batch shapes
only fit, or not, once it is known.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator

from fai_rl.algorithms import algorithm_names, spec_of
from fai_rl.config.deepspeed import load_deepspeed_config, offloads_params, recipe_conflicts, zero_stage
from fai_rl.config.schema import DPO_LOSSES, EVAL_METRICS, JUDGE_PLACEHOLDERS, EvalRecipe, Recipe
from fai_rl.errors import RecipeError

Problem = tuple[str, str]


def check_rules(recipe: Recipe, processes: int = 1) -> list[Problem]:
    """Every cross-field / range problem of a recipe, for a launch of `processes` processes in all."""
    return [
        *_ranges(recipe),
        *_model_rules(recipe),
        *_data_rules(recipe),
        *_training_rules(recipe),
        *_deepspeed_rules(recipe),
        *_dpo_rules(recipe),
        *_sft_reward_rules(recipe),
        *_grpo_rules(recipe, processes),
        *_ppo_rules(recipe),
        *_tinker_rules(recipe),
        *_workflow_rules(recipe, processes),
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
        names = _placeholders(template)
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
        if t.load_best_model_at_end:
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
    if t.optim in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit"):
        if t.backend == "tinker":
            yield "training.optim", f"'{t.optim}' has no meaning on the Tinker backend (it uses Adam); remove it."


def _deepspeed_rules(r: Recipe) -> Iterator[Problem]:
    t, m = r.training, r.model
    if t.deepspeed_config is None:
        return
    if t.backend == "tinker":
        yield "training.deepspeed_config", "is set but the Tinker backend does not use DeepSpeed; remove it."
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


def _dpo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if spec_of(t.algorithm).family != "preference":
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


def _sft_reward_rules(r: Recipe) -> Iterator[Problem]:
    """rewards: learned from by the RL algorithms; in SFT, eval metrics on held-out replies (none without eval data:
    the run says so at start); DPO reads none."""
    if not r.rewards:
        return
    t = r.training
    if spec_of(t.algorithm).family == "preference":
        yield "rewards", "DPO learns from preference pairs and reads no rewards; remove the rewards section."


def _sampling_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.temperature <= 0:
        yield "training.temperature", f"{t.temperature} must be greater than 0 (sampling needs it), e.g. 1.0."
    if not 0 < t.top_p <= 1:
        yield "training.top_p", f"{t.top_p} must be in (0, 1]."
    if t.max_completion_length <= 0:
        yield "training.max_completion_length", f"{t.max_completion_length} must be greater than 0, e.g. 256."
    alone = spec_of(t.algorithm).reward_model_alone  # a reward model is reward enough
    if not r.rewards and not (alone and r.model.reward_model_name):
        yield "rewards", (
            f"is empty, but {t.algorithm} learns from rewards; add e.g. rewards[0].function=exact_match"
            + (" or set model.reward_model_name." if alone else ".")
        )


def _grpo_rules(r: Recipe, processes: int) -> Iterator[Problem]:
    t = r.training
    if not spec_of(t.algorithm).samples_groups:
        return
    yield from _sampling_rules(r)
    # A generation round samples per_device_train_batch_size x processes x steps completions, in whole groups.
    across = f" x {processes} processes" if processes > 1 else ""
    if t.num_generations < 2:
        yield "training.num_generations", f"{t.num_generations} must be at least 2: advantages compare a group."
    else:
        steps = t.steps_per_generation or t.gradient_accumulation_steps
        batch = t.per_device_train_batch_size * processes * steps
        if batch % t.num_generations:
            per_process = t.per_device_train_batch_size * steps
            gpus = next(k for k in range(1, t.num_generations + 1) if per_process * k % t.num_generations == 0)
            launch = (f", or launch on {gpus} GPUs (--num-gpus {gpus}: a batch of {per_process * gpus})"
                      if processes == 1 and gpus > 1 else "")
            yield "training.num_generations", (
                f"{t.num_generations} does not divide the generation batch of {batch} completions "
                f"(per_device_train_batch_size {t.per_device_train_batch_size}{across} x "
                f"{'steps_per_generation' if t.steps_per_generation else 'gradient_accumulation_steps'} {steps}); "
                f"make the batch a multiple of num_generations{launch}."
            )
    has_eval = bool(r.data.eval_datasets) or r.data.eval_split_ratio > 0
    eval_group = t.num_generations if t.num_generations_eval is None else t.num_generations_eval
    if t.num_generations_eval is not None and t.num_generations_eval < 1:
        yield "training.num_generations_eval", f"{t.num_generations_eval} must be at least 1 (or null: num_generations)."
    elif has_eval and eval_group >= 1 and (t.per_device_eval_batch_size * processes) % eval_group:
        key = "num_generations" if t.num_generations_eval is None else "num_generations_eval"
        yield "training.per_device_eval_batch_size", (
            f"{t.per_device_eval_batch_size}{across} is not a multiple of training.{key} ({eval_group}); "
            "evaluation samples whole groups too: use a multiple of it."
        )
    if t.epsilon is not None and t.epsilon <= 0:
        yield "training.epsilon", f"{t.epsilon} must be greater than 0."
    if t.beta is not None and t.beta < 0:
        yield "training.beta", f"{t.beta} must be 0 (no reference model) or more."
    if t.num_iterations < 1:
        yield "training.num_iterations", f"{t.num_iterations} must be at least 1."
    if spec_of(t.algorithm).sequence_ratios:
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
    if not spec_of(t.algorithm).rollout_loop:
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
    rollout = t.per_device_train_batch_size * t.gradient_accumulation_steps  # prompts per process per PPO step
    if t.num_mini_batches < 1 or rollout % max(1, t.num_mini_batches):
        yield "training.num_mini_batches", (
            f"{t.num_mini_batches} must be at least 1 and divide the rollout batch of {rollout} prompts "
            f"(per_device_train_batch_size {t.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{t.gradient_accumulation_steps})."
        )
    # Keys the local PPO (written here, not TRL) cannot honour.
    if t.optim not in ("adamw_torch", "adamw_torch_fused"):
        yield "training.optim", f"'{t.optim}' is not offered by PPO, which uses torch AdamW; set training.optim=adamw_torch."


# DPO losses the Tinker backend computes itself (through forward_backward_custom).
TINKER_DPO_LOSSES = ("sigmoid", "hinge", "ipo", "sft")


def _tinker_rules(r: Recipe) -> Iterator[Problem]:
    t, k = r.training, r.tinker
    if t.backend != "tinker":
        return
    for key in ("save_every", "checkpoint_ttl_s"):
        value = getattr(k, key)
        if value is not None and value <= 0:
            yield f"tinker.{key}", f"{value} must be greater than 0; or null."
    if k.request_timeout_s <= 0:
        yield "tinker.request_timeout_s", f"{k.request_timeout_s} must be greater than 0 (seconds)."
    if k.max_retries < 0:
        yield "tinker.max_retries", f"{k.max_retries} must be 0 or more."
    if k.resume_from is not None and not k.resume_from.startswith("tinker://"):
        yield "tinker.resume_from", (
            f"'{k.resume_from}' is not a Tinker path; give a tinker://<run>/weights/<name> state path "
            "(output_dir/checkpoints.json lists them)."
        )
    if not (k.train_mlp or k.train_attn or k.train_unembed):
        yield "tinker.train_mlp", "false with train_attn and train_unembed false: LoRA would train nothing."
    if spec_of(t.algorithm).family == "preference":
        for i, loss in enumerate(t.dpo_loss_type):
            if loss in DPO_LOSSES and loss not in TINKER_DPO_LOSSES:
                yield f"training.dpo_loss_type[{i}]", (
                    f"'{loss}' is not offered on the Tinker backend; use one of {', '.join(TINKER_DPO_LOSSES)}, "
                    "or training.backend=local."
                )


def _placeholders(template: str) -> list[str] | None:
    """The {names} a str.format template uses; None when it is not a valid template."""
    import string

    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None


def _workflow_rules(r: Recipe, processes: int = 1) -> Iterator[Problem]:
    w, t = r.workflow, r.training
    if w.type == "single":
        if w.solver_prompt is not None:
            yield "workflow.solver_prompt", (
                "is set but workflow.type is single, which is plain GRPO reading the prompt column; set "
                "workflow.type=solver_judge (or your module:Class), or remove workflow.solver_prompt."
            )
        return
    if w.kwargs and ":" not in w.type:
        yield "workflow.kwargs", (
            f"{dict(w.kwargs)} but '{w.type}' is a built-in workflow, configured by the workflow keys themselves; "
            "remove workflow.kwargs (it is for module:Class workflows)."
        )
    if t.backend == "local" and (processes > 1 or t.deepspeed_config):
        how = f"{processes} processes" if processes > 1 else f"training.deepspeed_config={t.deepspeed_config}"
        yield "workflow.type", (
            f"'{w.type}' on the local backend runs in one process (its loop is written here, not HF Trainer's), "
            f"but this launch asks for {how}; use one GPU (--num-gpus 1, no deepspeed_config), or the Tinker backend."
        )
    if not spec_of(t.algorithm).workflow_modules:
        able = [n for n in algorithm_names() if spec_of(n).workflow_modules]
        yield "workflow.type", (
            f"'{w.type}' with training.algorithm={t.algorithm}: workflows are trained with "
            f"{' or '.join(n.upper() for n in able)}; set training.algorithm={able[0]} (or {', '.join(able[1:])}), "
            "or workflow.type=single."
        )
    if ":" not in w.type and w.type != "solver_judge":
        near = difflib.get_close_matches(w.type, ["single", "solver_judge"], n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        yield "workflow.type", (
            f"'{w.type}' is not a built-in workflow; {hint}use single, solver_judge, or your own class as "
            "module:Class or path/to/file.py:Class."
        )
    if t.beta:
        yield "training.beta", (
            f"{t.beta} with workflow.type '{w.type}': workflow runs have no KL term to a reference; set "
            "training.beta=0."
        )
    if t.backend == "local" and t.optim not in ("adamw_torch", "adamw_torch_fused"):
        yield "training.optim", (
            f"'{t.optim}' is not offered by the local workflow loop, which uses torch AdamW; set "
            "training.optim=adamw_torch."
        )
    if w.solver_prompt is not None and _placeholders(w.solver_prompt) is None:
        yield "workflow.solver_prompt", "is not a valid template (unbalanced { }); write columns as {column}, a "\
            "literal brace as {{ or }}."
    if w.type != "solver_judge":
        return
    if w.num_solutions < 2:
        yield "workflow.num_solutions", f"{w.num_solutions} must be at least 2: the judge picks one of several."
    for key, template, allowed in (("judge_prompt", w.judge_prompt, JUDGE_PLACEHOLDERS),
                                   ("judge_solution_format", w.judge_solution_format, ("index", "solution"))):
        names = _placeholders(template)
        if names is None:
            yield f"workflow.{key}", "is not a valid template (unbalanced { }); write a literal brace as {{ or }}."
            continue
        unknown = sorted({n for n in names if n not in allowed})
        if unknown:
            yield f"workflow.{key}", (
                f"uses {', '.join('{' + n + '}' for n in unknown)}; the placeholders are "
                f"{', '.join('{' + n + '}' for n in allowed)} (write a literal brace as {{{{ or }}}})."
            )
        needed = "solutions" if key == "judge_prompt" else "solution"
        if needed not in names:
            yield f"workflow.{key}", f"has no {{{needed}}}: the judge would not see the candidates; add it."
    for key in ("solver_reward", "judge_reward"):
        if getattr(w, key) < 0:
            yield f"workflow.{key}", f"{getattr(w, key)} must be 0 or more (a weight on the role's reward)."


# ----------------------------------------------------------------------------------------------------------------------
# fai-rl-eval recipes


def check_eval_rules(r: EvalRecipe, load_recipe: Callable[[str], Recipe]) -> list[Problem]:
    """Every cross-field / range problem of an evaluation recipe (rewards are checked by the caller's extra rule).

    `load_recipe` (fai_rl.config.load's) loads a workflow task's training recipe: passed in, so that rules never
    import the loader that imports them.
    """
    return list(_eval_rules(r, load_recipe))


def _eval_rules(r: EvalRecipe, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    e = r.evaluation
    if not e.models:
        yield "evaluation.models", "is empty; name at least one model, e.g. evaluation.models=[runs/my-run]."
    for i, spec in enumerate([*e.models, *([e.baseline] if e.baseline is not None else [])]):
        key = f"evaluation.models[{i}]" if i < len(e.models) else "evaluation.baseline"
        if not spec.strip():
            yield key, "is empty; name a run dir, a model dir, a hub id or a tinker:// path."
        elif spec.startswith("tinker://") and not e.base_model:
            yield "evaluation.base_model", (
                f"is null, but {key} is a Tinker path ({spec}); name the base model its weights were trained from "
                "(its tokenizer renders the prompts), e.g. evaluation.base_model=Qwen/Qwen3-4B-Instruct-2507."
            )
    if not e.tasks:
        yield "evaluation.tasks", "is empty; add a task, e.g. a name and dataset: {name: fai-rl/digits, split: test}."
    for key, value in (("batch_size", e.batch_size), ("request_timeout_s", e.request_timeout_s)):
        if value <= 0:
            yield f"evaluation.{key}", f"{value} must be greater than 0."
    seen: dict[str, int] = {}
    for i, task in enumerate(e.tasks):
        key = f"evaluation.tasks[{i}]"
        if task.name in seen:
            yield f"{key}.name", (f"'{task.name}' is also the name of evaluation.tasks[{seen[task.name]}]; names "
                                  "must differ.")
        seen.setdefault(task.name, i)
        if not task.name.strip():
            yield f"{key}.name", "is empty; name the task (it labels the table and the files)."
        yield from _eval_task_rules(task, key, load_recipe)


def _eval_task_rules(task, key: str, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    allowed = EVAL_METRICS[task.type]
    for j, metric in enumerate(task.metrics):
        if metric not in allowed:
            near = difflib.get_close_matches(metric, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'? " if near else ""
            extra = " (reward functions go under rewards:)" if task.type == "generate" else ""
            yield f"{key}.metrics[{j}]", (
                f"'{metric}' is not a {task.type} metric; {hint}use {', '.join(allowed)}{extra}."
            )
    if task.type == "workflow":
        yield from _eval_workflow_rules(task, key, load_recipe)
    elif task.workflow_recipe is not None:
        yield f"{key}.workflow_recipe", f"is only read by type workflow (this task is {task.type}); remove it."
    if task.type == "multiple_choice" and task.rewards:
        yield f"{key}.rewards", ("multiple_choice tasks are scored by accuracy only; remove rewards or use type "
                                 "generate.")
    if not task.metrics and not task.rewards:
        yield f"{key}.metrics", f"is empty and there are no rewards: nothing would be scored; use {allowed[0]}."
    if task.num_samples < 1:
        yield f"{key}.num_samples", f"{task.num_samples} must be at least 1."
    elif task.num_samples > 1 and task.temperature == 0:
        yield f"{key}.num_samples", (
            f"{task.num_samples} samples at temperature 0 (greedy) would all be the same answer; set "
            f"{key}.temperature (e.g. 1.0) or num_samples=1."
        )
    if task.type == "multiple_choice" and task.multiple_choice_mode == "loglikelihood" and task.num_samples != 1:
        yield f"{key}.num_samples", "must be 1 for multiple_choice by loglikelihood (nothing is sampled)."
    for j, k in enumerate(task.pass_k):
        if not 1 <= k <= max(1, task.num_samples):
            yield f"{key}.pass_k[{j}]", (
                f"{k} must be in 1..num_samples ({task.num_samples}): pass@k draws k of the n samples; raise "
                f"{key}.num_samples or lower k."
            )
    if task.temperature < 0:
        yield f"{key}.temperature", f"{task.temperature} must be 0 (greedy) or more."
    if not 0 < task.top_p <= 1:
        yield f"{key}.top_p", f"{task.top_p} must be in (0, 1]."
    if task.max_new_tokens <= 0:
        yield f"{key}.max_new_tokens", f"{task.max_new_tokens} must be greater than 0, e.g. 256."
    if task.numeric_tolerance < 0:
        yield f"{key}.numeric_tolerance", f"{task.numeric_tolerance} must be 0 or more."
    if task.dataset.max_samples is not None and task.dataset.max_samples <= 0:
        yield f"{key}.dataset.max_samples", f"{task.dataset.max_samples} must be greater than 0; or null for all rows."
    if not task.dataset.name.strip():
        yield f"{key}.dataset.name", "is empty; name a file, a dataset dir, a hub dataset or a built-in task."


def _eval_workflow_rules(task, key: str, load_recipe: Callable[[str], Recipe]) -> Iterator[Problem]:
    """A workflow task names a training recipe with a workflow; its rewards score the episodes."""
    if task.rewards:
        yield f"{key}.rewards", "a workflow task is scored by the rewards of its workflow_recipe; remove them here."
    if task.workflow_recipe is None:
        yield f"{key}.workflow_recipe", ("is null; name the training recipe whose workflow to run, e.g. "
                                         "recipes/quickstart/solver_judge.yaml.")
        return
    try:
        recipe = load_recipe(task.workflow_recipe)
    except RecipeError as e:
        yield f"{key}.workflow_recipe", f"'{task.workflow_recipe}' does not load: " + "; ".join(e.problems)
        return
    if not recipe.rewards:
        yield f"{key}.workflow_recipe", f"'{task.workflow_recipe}' has no rewards: nothing would score the episodes."
