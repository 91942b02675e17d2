"""Which recipe keys each algorithm and backend reads: one table, checked at load and rendered into the docs.

Every schema key has a row: the algorithms and backends that honour it, whether FAI-RL's own config has the key
(`fai_rl`), and what it maps onto (the library argument, or what fai-rl does with it). A key written in a recipe that
the chosen (algorithm, backend) does not read is reported, never silently ignored:
  - a key of ours -> a recipe error naming the key and what reads it ("remove it");
  - a key FAI-RL's config accepts (its template writes many of them into every recipe) -> a one-line note, because
    a FAI-RL recipe must run unchanged.
FAI-RL keys that only its multimodal `sft_vlm` trainer reads (`FAI_RL_VLM_KEYS`) are not in the schema at all: the
loader accepts them with a note. tests/test_key_support.py checks that every schema key has a row here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from fai_rl.algorithms import algorithm_names, spec_of
from fai_rl.config.schema import ALGORITHMS, BACKENDS, Recipe

# Groups of algorithms, asked of the registry (fai_rl.algorithms); rows naming one algorithm name its own keys.
ALL = ALGORITHMS
HF_TRAINER = algorithm_names(rollout_loop=False)  # trained through HF Trainer / TRL (PPO is a loop written here)
RL = algorithm_names(samples_groups=True)  # GRPO and its variants, RLOO
# GRPO's own objective keys (loss_type, importance_sampling_level, scale_rewards): TRL's RLOOConfig has none of them
GROUP_NORMALISED = algorithm_names(samples_groups=True, advantage="group")
# sample completions and learn from rewards; the group-sampling ones first, as the docs and messages have always listed them
SAMPLING = (*RL, *(n for n in algorithm_names(samples=True) if n not in RL))


@dataclass(frozen=True)
class Support:
    """Who reads one recipe key."""

    algorithms: tuple[str, ...] = ALL
    backends: tuple[str, ...] = BACKENDS
    fai_rl: bool = False  # FAI-RL's config has this key: unread use is a note, not an error
    maps_to: str = ""  # the library argument or behaviour it maps onto (docs/fai-rl.md, recipe-reference.md)
    # why the key has no effect in this particular recipe although the algorithm and backend read it (None: it has)
    inert_when: Callable[[Recipe], str | None] | None = field(default=None, compare=False)


def _no_lora(r: Recipe) -> str | None:
    return None if r.model.use_lora or r.training.backend == "tinker" else "no effect without model.use_lora"


def _no_4bit(r: Recipe) -> str | None:
    return None if r.model.load_in_4bit else "no effect without model.load_in_4bit"


def _model_not_s3(r: Recipe) -> str | None:
    return None if r.model.base_model_name.startswith("s3://") else "only read for an s3:// model.base_model_name"


def _templated_prompts(r: Recipe) -> str | None:
    if not spec_of(r.training.algorithm).samples or not any(d.prompt_template for d in r.data.datasets):
        return None
    return "every data.datasets[] has a prompt_template, whose own system message is used (as in FAI-RL)" if all(
        d.prompt_template for d in r.data.datasets) else None


def _tinker_dpo(r: Recipe) -> str | None:
    return ("Tinker's DPO tokenises its pairs in this process" if spec_of(r.training.algorithm).data == "pairs"
            and r.training.backend == "tinker" else None)


def _low_cpu_mem_false(r: Recipe) -> str | None:
    return (None if r.model.low_cpu_mem_usage else
            "transformers >= 5 always loads without a second copy of the weights; false has no effect")


def _no_transcripts(r: Recipe) -> str | None:
    if r.training.backend != "local":
        return None
    if spec_of(r.training.algorithm).rollout_loop or r.workflow.type != "single":  # loops written here, not TRL's
        return "the local PPO and workflow loops write no rollout transcripts (the Tinker backend does)"
    return None


def _local(*algorithms: str, **kw) -> Support:
    return Support(algorithms=algorithms or ALL, backends=("local",), **kw)


def _fai(*algorithms: str, backends: tuple[str, ...] = BACKENDS, **kw) -> Support:
    return Support(algorithms=algorithms or ALL, backends=backends, fai_rl=True, **kw)


# Keys of list items are written with [] (data.datasets[].name); data.eval_datasets[] entries share those rows.
KEYS: dict[str, Support] = {
    # ---- model
    "model.base_model_name": _fai(maps_to="from_pretrained(...) / the Tinker base model; s3:// dirs are downloaded"),
    "model.torch_dtype": _fai(backends=("local",), maps_to="from_pretrained(dtype=...)"),
    "model.use_lora": _fai(backends=("local",), maps_to="peft LoraConfig (Tinker always trains LoRA)"),
    "model.lora_r": _fai(backends=("local",), maps_to="LoraConfig.r (Tinker: tinker.lora_rank)", inert_when=_no_lora),
    "model.lora_alpha": _fai(backends=("local",), maps_to="LoraConfig.lora_alpha", inert_when=_no_lora),
    "model.lora_dropout": _fai(backends=("local",), maps_to="LoraConfig.lora_dropout", inert_when=_no_lora),
    "model.lora_target_modules": _fai(backends=("local",), maps_to="LoraConfig.target_modules", inert_when=_no_lora),
    "model.lora_bias": _fai(backends=("local",), maps_to="LoraConfig.bias", inert_when=_no_lora),
    "model.lora_exclude_modules": _fai(backends=("local",), maps_to="LoraConfig.exclude_modules",
                                       inert_when=_no_lora),
    "model.load_in_4bit": _fai(backends=("local",), maps_to="BitsAndBytesConfig(load_in_4bit=True) (QLoRA)"),
    "model.load_in_8bit": _fai(backends=("local",), maps_to="BitsAndBytesConfig(load_in_8bit=True)"),
    "model.bnb_4bit_quant_type": _fai(backends=("local",), maps_to="BitsAndBytesConfig.bnb_4bit_quant_type",
                                      inert_when=_no_4bit),
    "model.bnb_4bit_compute_dtype": _fai(backends=("local",), maps_to="BitsAndBytesConfig.bnb_4bit_compute_dtype",
                                         inert_when=_no_4bit),
    "model.bnb_4bit_use_double_quant": _fai(backends=("local",),
                                            maps_to="BitsAndBytesConfig.bnb_4bit_use_double_quant",
                                            inert_when=_no_4bit),
    "model.attn_implementation": _local(maps_to="from_pretrained(attn_implementation=...)"),
    "model.use_flash_attention": _fai(backends=("local",), maps_to="attn_implementation=flash_attention_2 where "
                                      "flash-attn and the GPU allow, else sdpa (with a note)"),
    "model.low_cpu_mem_usage": _fai(backends=("local",), inert_when=_low_cpu_mem_false,
                                    maps_to="from_pretrained(low_cpu_mem_usage=...); transformers >= 5 always loads "
                                    "without a second copy"),
    "model.ignore_mismatched_sizes": _fai(backends=("local",), maps_to="from_pretrained(ignore_mismatched_sizes=...)"),
    "model.trust_remote_code": Support(maps_to="from_pretrained / AutoTokenizer(trust_remote_code=...)"),
    "model.value_model_name": _fai("ppo", backends=("local",),
                                   maps_to="PPO critic (and, without rewards:, the reward model, as FAI-RL's PPO)"),
    "model.reward_model_name": Support(algorithms=SAMPLING, maps_to="a sequence-classification reward (weight 1)"),
    "model.s3_region": _fai(maps_to="boto3 client region for the s3:// model", inert_when=_model_not_s3),
    "model.s3_endpoint_url": _fai(maps_to="boto3 client endpoint_url for the s3:// model", inert_when=_model_not_s3),
    # ---- data
    "data.datasets": _fai(maps_to="the training rows, concatenated in order"),
    "data.eval_datasets": Support(maps_to="held-out rows (eval_loss / eval_reward)"),
    "data.eval_split_ratio": Support(maps_to="held-out share of the training rows"),
    "data.max_length": _fai(maps_to="SFTConfig/DPOConfig.max_length; RL prompts (GRPO/GSPO/RLOO, PPO, workflows) "
                            "keep their last max_length tokens on both backends (local GRPO/GSPO/RLOO: TRL's rendered "
                            "ids cut by fai_rl.backends.local.prompt_cut)"),
    "data.system_prompt": _fai("sft", "dpo", *SAMPLING, inert_when=_templated_prompts,
                               maps_to="a system message; with dataset_columns (SFT) FAI-RL's str.format template"),
    "data.user_prompt": _fai("sft", maps_to="FAI-RL split mode: the user turn template (loss on the reply only)"),
    "data.assistant_prompt": _fai("sft", maps_to="FAI-RL split mode: the assistant turn template"),
    "data.loss_on": Support(algorithms=("sft",), maps_to="the SFT loss mask (labels built here)"),
    "data.shuffle_seed": Support(maps_to="one seeded shuffle of the training rows"),
    "data.max_prompt_length": _fai(*RL, maps_to="max_completion_length = max_length - max_prompt_length "
                                   "(FAI-RL's GRPO); FAI-RL's SFT/DPO/CPT/PPO never read it"),
    "data.remove_unused_columns": _fai("sft", "cpt", "dpo", backends=("local",),
                                       maps_to="TrainingArguments.remove_unused_columns (GRPO/GSPO keep every column: "
                                       "the rewards read them)"),
    "data.dataset_num_proc": _fai("sft", "cpt", "dpo", inert_when=_tinker_dpo,
                                  maps_to="processes tokenising SFT/CPT rows; DPOConfig.dataset_num_proc"),
    "data.datasets[].name": _fai(maps_to="a local file, s3:// file, dataset dir, hub dataset or built-in task"),
    "data.datasets[].split": _fai(maps_to="load_dataset(split=...)"),
    "data.datasets[].subset": _fai(maps_to="load_dataset(name, subset)"),
    "data.datasets[].max_samples": Support(maps_to="the first N rows"),
    "data.datasets[].prompt_column": _fai("sft", "dpo", *SAMPLING, maps_to="the prompt text"),
    "data.datasets[].answer_column": _fai("sft", *SAMPLING,
                                          maps_to="SFT completion; the `answer` the rewards compare with"),
    "data.datasets[].chosen_column": _fai("dpo", maps_to="DPO chosen reply"),
    "data.datasets[].rejected_column": _fai("dpo", maps_to="DPO rejected reply"),
    "data.datasets[].messages_column": Support(algorithms=("sft", "dpo", *SAMPLING),
                                               maps_to="chat messages"),
    "data.datasets[].text_column": _fai("sft", "cpt", maps_to="plain text (CPT reads only this)"),
    "data.datasets[].dataset_columns": _fai("sft", maps_to="the columns filling FAI-RL's prompt templates"),
    "data.datasets[].prompt_template": Support(algorithms=SAMPLING,
                                               maps_to="FAI-RL's GSM8K / OpenMathInstruct prompt and answer"),
    "data.datasets[].s3_region": _fai(maps_to="boto3 region for an s3:// dataset file"),
    "data.datasets[].s3_endpoint_url": _fai(maps_to="boto3 endpoint_url for an s3:// dataset file"),
    # ---- training: every algorithm, both backends
    "training.algorithm": _fai(),
    "training.backend": Support(),
    "training.output_dir": _fai(maps_to="TrainingArguments.output_dir: every artefact of the run"),
    "training.overwrite_output_dir": Support(),
    "training.learning_rate": _fai(maps_to="TrainingArguments.learning_rate / Tinker AdamParams.learning_rate"),
    "training.num_train_epochs": _fai(maps_to="TrainingArguments.num_train_epochs"),
    "training.max_steps": _fai(maps_to="TrainingArguments.max_steps (-1 or null: num_train_epochs)"),
    "training.per_device_train_batch_size": _fai(maps_to="TrainingArguments.per_device_train_batch_size"),
    "training.per_device_eval_batch_size": Support(maps_to="TrainingArguments.per_device_eval_batch_size"),
    "training.gradient_accumulation_steps": _fai(maps_to="TrainingArguments.gradient_accumulation_steps; PPO: "
                                                 "rollout batch = per_device x this (TRL's PPO meaning)"),
    "training.warmup_steps": _fai(maps_to="TrainingArguments.warmup_steps"),
    "training.lr_scheduler_type": Support(maps_to="TrainingArguments.lr_scheduler_type"),
    "training.weight_decay": Support(maps_to="TrainingArguments.weight_decay / AdamParams.weight_decay"),
    "training.max_grad_norm": Support(maps_to="TrainingArguments.max_grad_norm / AdamParams.grad_clip_norm"),
    "training.seed": Support(maps_to="TrainingArguments.seed / data_seed; sampling seeds"),
    "training.logging_steps": _fai(maps_to="TrainingArguments.logging_steps"),
    "training.save_steps": _fai(maps_to="TrainingArguments.save_steps / Tinker save_state period"),
    "training.eval_steps": _fai(maps_to="TrainingArguments.eval_steps (no eval data: a note, no evaluation)"),
    # ---- training: local only
    "training.optim": _local(maps_to="TrainingArguments.optim (PPO and workflows: torch AdamW only)"),
    "training.bf16": _fai(backends=("local",), maps_to="TrainingArguments.bf16 / accelerate mixed_precision"),
    "training.fp16": _fai(backends=("local",),
                          maps_to="TrainingArguments.fp16 / accelerate mixed_precision (PPO); needs a CUDA GPU"),
    "training.gradient_checkpointing": _fai(backends=("local",), maps_to="TrainingArguments.gradient_checkpointing"),
    "training.deepspeed_config": _fai(backends=("local",), maps_to="TrainingArguments.deepspeed (+ accelerate "
                                      "--use_deepspeed); FAI-RL's configs/deepspeed/*.json names map to ours"),
    "training.save_total_limit": Support(maps_to="TrainingArguments.save_total_limit; Tinker: older saved states "
                                         "deleted on the service"),
    "training.packing": _local("sft", maps_to="SFTConfig.packing"),
    "training.padding_free": _local("sft", "dpo", maps_to="SFTConfig.padding_free; DPO: fai-rl's PackedDPOTrainer "
                                    "(TRL's DPOConfig.padding_free is disabled)"),
    "training.use_liger_kernel": _local("sft", "cpt", "dpo", maps_to="TrainingArguments.use_liger_kernel"),
    "training.fast_generation": _local(*RL, "ppo", maps_to="fai-rl's graph decoder (fai_rl.decode): the decode "
                                       "step replayed as one CUDA graph"),
    "training.dataloader_num_workers": _fai(*HF_TRAINER, backends=("local",),
                                            maps_to="TrainingArguments.dataloader_num_workers"),
    "training.dataloader_pin_memory": _fai(*HF_TRAINER, backends=("local",),
                                           maps_to="TrainingArguments.dataloader_pin_memory (null: on with a GPU)"),
    "training.dataloader_drop_last": _fai(*HF_TRAINER, backends=("local",),
                                          maps_to="TrainingArguments.dataloader_drop_last"),
    "training.ddp_find_unused_parameters": _fai(*HF_TRAINER, backends=("local",),
                                                maps_to="TrainingArguments.ddp_find_unused_parameters"),
    "training.save_only_model": _fai(*HF_TRAINER, backends=("local",),
                                     maps_to="TrainingArguments.save_only_model; --resume then continues with a fresh "
                                     "optimizer, the schedule continued"),
    "training.prediction_loss_only": _fai("sft", "cpt", "dpo", backends=("local",),
                                          maps_to="TrainingArguments.prediction_loss_only"),
    "training.metric_for_best_model": _local(*HF_TRAINER, maps_to="TrainingArguments.metric_for_best_model"),
    "training.greater_is_better": _local(*HF_TRAINER, maps_to="TrainingArguments.greater_is_better"),
    "training.load_best_model_at_end": _local(*HF_TRAINER, maps_to="TrainingArguments.load_best_model_at_end"),
    # ---- training: per algorithm
    "training.beta": _fai("dpo", *RL, maps_to="DPOConfig.beta / GRPOConfig.beta / RLOOConfig.beta"),
    "training.dpo_loss_type": Support(algorithms=("dpo",), maps_to="DPOConfig.loss_type"),
    "training.dpo_loss_weights": Support(algorithms=("dpo",), maps_to="DPOConfig.loss_weights"),
    "training.label_smoothing": Support(algorithms=("dpo",), maps_to="DPOConfig.label_smoothing"),
    "training.precompute_ref_log_probs": _local("dpo", maps_to="DPOConfig.precompute_ref_log_probs"),
    "training.num_generations": _fai(*RL, maps_to="GRPOConfig.num_generations"),
    "training.num_generations_eval": Support(algorithms=SAMPLING, maps_to="GRPOConfig.num_generations_eval"),
    "training.max_completion_length": Support(algorithms=("sft", *SAMPLING),
                                              maps_to="GRPOConfig.max_completion_length"),
    "training.temperature": Support(algorithms=SAMPLING, maps_to="GRPOConfig.temperature / SamplingParams"),
    "training.top_p": Support(algorithms=SAMPLING, maps_to="GRPOConfig.top_p"),
    "training.log_rollouts_every": Support(algorithms=SAMPLING, inert_when=_no_transcripts,
                                           maps_to="output_dir/rollouts/step-N.jsonl and .html, wandb table "
                                           "`rollouts` (fai_rl.transcripts)"),
    "training.epsilon": _fai(*RL, maps_to="GRPOConfig.epsilon"),
    "training.epsilon_high": _fai(*RL, maps_to="GRPOConfig.epsilon_high"),
    "training.loss_type": Support(algorithms=GROUP_NORMALISED, maps_to="GRPOConfig.loss_type"),
    "training.importance_sampling_level": _fai(*GROUP_NORMALISED, maps_to="GRPOConfig.importance_sampling_level / the Tinker "
                                               "loss's token or sequence ratio"),
    "training.scale_rewards": Support(algorithms=GROUP_NORMALISED, maps_to="GRPOConfig.scale_rewards"),
    "training.drop_zero_variance_groups": Support(
        algorithms=RL, maps_to="DAPO dynamic sampling's filter (Tinker RL driver; local: "
        "fai_rl.backends.local.flat_groups over TRL's GRPOTrainer / RLOOTrainer; workflows: per task and role, "
        "fai_rl.workflows.grouping.drop_flat_groups)"),
    "training.num_iterations": Support(algorithms=RL, maps_to="GRPOConfig.num_iterations"),
    "training.steps_per_generation": _fai(*RL, backends=("local",), maps_to="GRPOConfig.steps_per_generation"),
    "training.mask_truncated_completions": _local(*RL, maps_to="GRPOConfig.mask_truncated_completions"),
    "training.use_vllm": _local(*RL, maps_to="GRPOConfig.use_vllm"),
    "training.vllm_mode": _local(*RL, maps_to="GRPOConfig.vllm_mode"),
    "training.kl_coef": Support(algorithms=("ppo",), maps_to="PPO's per-token KL penalty"),
    "training.gamma": _fai("ppo", backends=("local",), maps_to="PPO GAE discount (Tinker PPO has no critic)"),
    "training.lam": _fai("ppo", backends=("local",), maps_to="PPO GAE lambda"),
    "training.cliprange": _fai("ppo", maps_to="PPO policy clip / Tinker ppo loss clip"),
    "training.cliprange_value": _fai("ppo", backends=("local",), maps_to="PPO value clip"),
    "training.vf_coef": _fai("ppo", backends=("local",), maps_to="PPO value-loss weight"),
    "training.num_ppo_epochs": Support(algorithms=("ppo",), maps_to="PPO epochs per rollout"),
    "training.num_mini_batches": Support(algorithms=("ppo",), maps_to="PPO mini-batches per rollout"),
    "training.whiten_advantages": Support(algorithms=("ppo",), maps_to="PPO advantage whitening"),
    "training.missing_eos_penalty": Support(algorithms=("ppo",), maps_to="PPO penalty for completions without EOS"),
    # ---- wandb
    "wandb.enabled": _fai(maps_to="every metrics.jsonl row, under its names, on both backends (fai_rl.tracking)"),
    "wandb.project": _fai(maps_to="wandb.init(project=...)"),
    "wandb.entity": _fai(maps_to="wandb.init(entity=...)"),
    "wandb.name": _fai(maps_to="wandb.init(name=...)"),
    "wandb.tags": _fai(maps_to="wandb.init(tags=...)"),
    "wandb.mode": Support(maps_to="wandb.init(mode=...)"),
    "wandb.base_url": _fai(maps_to="WANDB_BASE_URL"),
    "wandb.api_key": _fai(maps_to="refused unless null: WANDB_API_KEY / `wandb login`"),
    "tensorboard.enabled": Support(maps_to="every metrics.jsonl row as scalars in output_dir/tensorboard/, both "
                                   "backends (fai_rl.tensorboard_log)"),
    # ---- rewards, Tinker, workflows
    "rewards": Support(algorithms=("sft", *SAMPLING), maps_to="reward functions (SFT: eval metrics of greedy replies)"),
    "tinker.rl_loss": Support(algorithms=algorithm_names(samples_groups=True, sequence_ratios=False),
                              backends=("tinker",), maps_to="the service loss for GRPO / RLOO"),
    "tinker.max_steps_off_policy": Support(algorithms=(*RL, "ppo"), backends=("tinker",),
                                           maps_to="sampling overlapped with training (the Tinker RL driver and "
                                           "workflow loop)"),
    "model.init_from": Support(maps_to="local: from_pretrained of a run's final/ or latest checkpoint-N (a LoRA "
                               "adapter merged into its base first; fai_rl.models.init_from); Tinker: "
                               "TrainingClient.load_state (weights, no optimizer)"),
    "tinker.ppo_baseline": Support(algorithms=("ppo",), backends=("tinker",), maps_to="PPO advantage baseline"),
    # ---- S3 (FAI-RL's s3: section)
    "s3.enabled": _fai(maps_to="upload checkpoints / final/ (boto3 or s5cmd)"),
    "s3.bucket": _fai(maps_to="the target bucket"),
    "s3.prefix": _fai(maps_to="the key prefix"),
    "s3.region": _fai(maps_to="boto3 region"),
    "s3.endpoint_url": _fai(maps_to="boto3 endpoint_url"),
    "s3.upload_checkpoints": _fai(backends=("local",), maps_to="upload each checkpoint-N (Tinker states stay on "
                                  "the service)"),
    "s3.upload_final_model": _fai(maps_to="upload final/"),
    "s3.delete_local_after_upload": _fai(backends=("local",), maps_to="delete checkpoint-N after a verified upload"),
    "s3.uploader": _fai(maps_to="boto3 or the s5cmd binary"),
    "s3.max_retries": Support(maps_to="upload attempts after the first"),
}
# Sections whose every key is read by one backend or the GRPO/GSPO workflow loops only.
_SECTION_DEFAULTS = {
    "tinker": Support(backends=("tinker",), maps_to="the Tinker training client"),
    "workflow": Support(algorithms=RL, maps_to="multi-role GRPO/GSPO workflows"),
}

# FAI-RL keys only its multimodal SFT (`sft_vlm`) reads; fai-rl does not offer sft_vlm, so they are accepted, noted.
FAI_RL_VLM_KEYS = (
    "model.freeze_vision_tower", "data.datasets[].image_columns", "data.datasets[].video_columns",
    "data.image_cache_dir", "data.image_fetch_timeout", "data.image_fetch_retries", "data.max_image_pixels",
    "data.image_s3_region", "data.image_s3_endpoint_url", "data.video_cache_dir", "data.video_fetch_timeout",
    "data.video_fetch_retries", "data.video_num_frames", "data.video_fps", "data.video_backend",
    "data.video_s3_region", "data.video_s3_endpoint_url",
)


def table_key(dotted: str) -> str:
    """`data.eval_datasets[2].name` -> `data.datasets[].name`: the row of the table that covers a recipe key."""
    key = re.sub(r"\[\d+\]", "[]", dotted)
    return key.replace("data.eval_datasets[]", "data.datasets[]")


def support_of(key: str) -> Support | None:
    """The row of a table key (a section default for tinker.* / workflow.*); None for sections and list items."""
    if key in KEYS:
        return KEYS[key]
    section = key.split(".", 1)[0]
    if "." in key and section in _SECTION_DEFAULTS:
        return _SECTION_DEFAULTS[section]
    return None


def read_by(s: Support) -> str:
    """'all' / 'sft, dpo' / 'grpo, gspo on local': who reads a key (docs and messages)."""
    algos = "all algorithms" if s.algorithms == ALL else ", ".join(s.algorithms)
    where = "" if s.backends == BACKENDS else f" on the {'/'.join(s.backends)} backend"
    return algos + where


def why_unread(key: str, r: Recipe) -> str | None:
    """Why this recipe's (algorithm, backend) does not use `key` (None when it does)."""
    s = support_of(table_key(key))
    if s is None:
        return None
    t = r.training
    if t.algorithm not in s.algorithms:
        return f"training.algorithm {t.algorithm} does not read it (read by {read_by(s)})"
    if t.backend not in s.backends:
        return f"the {t.backend} backend does not read it (read by {read_by(s)})"
    return s.inert_when(r) if s.inert_when else None


def check_key_support(r: Recipe, given: dict[str, object], defaults: dict[str, object]) -> tuple[list, list[str]]:
    """(errors, notes) for the keys a recipe wrote (`given`: dotted key -> value) that this run does not read.

    An unread key of ours is an error; an unread FAI-RL key is a note, grouped with others of the same reason. A null
    written where the default is null says nothing and is skipped; so is a FAI-RL key written with our default value
    (FAI-RL's template writes `fp16: false` everywhere). Settings of a switched-off section (s3, wandb) are dormant,
    not ignored: they are not reported. The tinker: section on the local backend is dormant too (one recipe serves
    both backends): one note lists its keys.
    """
    errors: list[tuple[str, str]] = []
    noted: dict[str, list[str]] = {}
    dormant = [k for k, v in given.items() if k.startswith("tinker.") and v != defaults.get(k)]
    if r.training.backend != "tinker" and dormant:  # one recipe, both backends: its tinker: section waits for tinker
        noted["read only with training.backend=tinker (dormant on this backend)"] = sorted(dormant)
    for key, value in given.items():
        if r.training.backend != "tinker" and key.startswith("tinker."):
            continue
        row = table_key(key)
        s = support_of(row)
        if s is None:
            continue
        default = defaults.get(row)
        if value is None and default is None:
            continue
        reason = why_unread(key, r)
        if reason is None:
            continue
        if s.fai_rl:
            if value != default:
                noted.setdefault(reason, []).append(key)
        else:
            errors.append((key, f"{reason}; remove it, or change training.algorithm / training.backend."))
    notes = [f"{', '.join(keys)}: {reason}; no effect in this run"
             + ("." if reason.startswith("read only with") else " (FAI-RL recipe key, accepted).")
             for reason, keys in noted.items()]
    return errors, notes
