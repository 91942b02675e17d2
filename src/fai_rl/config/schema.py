"""The recipe schema: one typed tree, the only place defaults live.

Every field carries a one-line `help` (rendered into docs/recipe-reference.md by `python -m fai_rl.config.docs`) and,
where the value is one of a closed set, its `choices`. Validation (fai_rl.config.load) reads both, so a new field is
documented and checked the moment it is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from fai_rl.algorithms import algorithm_names

ALGORITHMS = algorithm_names()  # the registry's (fai_rl.algorithms), with their defaults for null training keys
BACKENDS = ("local", "tinker")
# transformers.SchedulerType values (tests/test_recipe_schema.py checks they match the installed transformers).
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
)  # not offered: cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay (need arguments no key carries)
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# A subset of transformers.OptimizerNames worth offering (checked against transformers by the same test).
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "lion_8bit",
    "paged_lion_8bit",
)


def _f(default: Any = MISSING, help: str = "", choices: tuple | None = None, **kw: Any) -> Any:
    """A dataclass field with its documentation (and closed set of values) attached."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelConfig:
    """What to train and how to load it."""

    base_model_name: str = _f(
        help="Model to start from: a hub id (e.g. Qwen/Qwen3-0.6B), a local HF model dir, or the built-in "
        "`fai-rl/tiny` (no download). On the Tinker backend: the Tinker base model name."
    )
    torch_dtype: str = _f(
        "auto",
        help="Weights dtype: auto (bfloat16 on a GPU that supports it, float32 on CPU), float32, bfloat16, float16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    use_lora: bool = _f(False, help="Train a LoRA adapter (peft) instead of all weights.")
    lora_r: int = _f(16, help="LoRA rank.")
    lora_alpha: int = _f(32, help="LoRA scaling numerator (the update is scaled by lora_alpha / lora_r).")
    lora_dropout: float = _f(0.05, help="Dropout on the LoRA branch, in [0, 1).")
    lora_target_modules: list[str] = _f(
        ["all-linear"], help="Modules that get LoRA: `all-linear`, or names such as q_proj, v_proj."
    )
    load_in_4bit: bool = _f(False, help="QLoRA: load the base weights in 4-bit NF4 (bitsandbytes); needs use_lora.")
    load_in_8bit: bool = _f(False, help="Load the base weights in 8-bit (bitsandbytes); needs use_lora.")
    bnb_4bit_quant_type: str = _f("nf4", help="4-bit quantisation data type.", choices=("nf4", "fp4"))
    attn_implementation: Optional[str] = _f(
        None,
        help="Attention kernel; null lets transformers choose (sdpa where available).",
        choices=(None, "eager", "sdpa", "flash_attention_2", "flash_attention_3"),
    )
    trust_remote_code: bool = _f(False, help="Allow model code from the hub repo to run (only for repos you trust).")
    value_model_name: Optional[str] = _f(
        None, help="PPO: a separate value (critic) model; null puts a value head on the policy's backbone."
    )
    reward_model_name: Optional[str] = _f(
        None, help="PPO: a sequence-classification reward model, added to the `rewards` functions."
    )
    # --- keys of FAI-RL's model config (docs/fai-rl.md), each mapped onto its transformers / peft / bitsandbytes argument
    low_cpu_mem_usage: bool = _f(
        True,
        help="Load without a second full copy of the weights in CPU memory. transformers >= 5 always loads this way, so "
        "true is what happens; false has no effect (a note says so).",
    )
    use_flash_attention: bool = _f(
        False,
        help="flash-attention 2 (attn_implementation=flash_attention_2) where flash-attn is installed and the GPU "
        "supports it (compute capability >= 8.0); else SDPA, with a one-line note. Overrides attn_implementation.",
    )
    lora_bias: str = _f(
        "none", help="Which biases LoRA trains (peft LoraConfig.bias).", choices=("none", "all", "lora_only")
    )
    lora_exclude_modules: Optional[Any] = _f(
        None,
        help="Modules never given LoRA even when lora_target_modules matches them (peft exclude_modules): a list of "
        "names, or one string read as a regex over the full module path.",
    )
    bnb_4bit_compute_dtype: Optional[str] = _f(
        None,
        help="QLoRA: dtype of the 4-bit matmuls (BitsAndBytesConfig.bnb_4bit_compute_dtype); null: the weights' dtype.",
        choices=(None, "float32", "bfloat16", "float16"),
    )
    bnb_4bit_use_double_quant: bool = _f(
        True, help="QLoRA: also quantise the quantisation constants (BitsAndBytesConfig.bnb_4bit_use_double_quant)."
    )
    ignore_mismatched_sizes: bool = _f(
        False, help="Load a checkpoint whose head sizes differ from the config (from_pretrained ignore_mismatched_sizes)."
    )
    s3_region: Optional[str] = _f(None, help="base_model_name s3://...: the bucket's region (null: boto3's default).")
    s3_endpoint_url: Optional[str] = _f(
        None, help="base_model_name s3://...: an S3-compatible endpoint, e.g. http://127.0.0.1:9000 (null: AWS)."
    )


@dataclass
class DatasetSpec:
    """One data source; columns are mapped onto what the algorithm needs."""

    name: str = _f(
        help="A local .jsonl/.json/.csv/.parquet file, an s3://bucket/key file of those types, a local dataset dir "
        "(save_to_disk or data files), a hub dataset id, or a built-in task such as `fai-rl/arithmetic`."
    )
    split: str = _f("train", help="Split to read (hub datasets, dataset dirs, built-in tasks); ignored for one file.")
    subset: Optional[str] = _f(None, help="Hub dataset configuration (subset) name.")
    max_samples: Optional[int] = _f(None, help="Use at most this many rows from this source (null: all).")
    prompt_column: str = _f("prompt", help="Column with the prompt (prompt/completion data, RL prompts).")
    answer_column: str = _f(
        "answer", help="Column with the answer: the completion for SFT, the reference answer for rewards."
    )
    chosen_column: str = _f("chosen", help="Column with the preferred response (DPO).")
    rejected_column: str = _f("rejected", help="Column with the dispreferred response (DPO).")
    messages_column: str = _f("messages", help="Column with chat messages: a list of {role, content}.")
    text_column: str = _f("text", help="Column with plain text (language-modelling data; CPT reads only this).")
    dataset_columns: Optional[list[str]] = _f(
        None,
        help="SFT (FAI-RL): the columns whose values fill the {placeholders} of data.system_prompt (one plain-text "
        "example, loss on every token) or of data.user_prompt / assistant_prompt (a chat turn pair, loss on the reply).",
    )
    prompt_template: Optional[str] = _f(
        None,
        help="GRPO/GSPO/PPO: FAI-RL's math prompt around each prompt_column value (a system message with the "
        "<think>/<answer> format and one worked example) and its answer extraction: gsm8k (the text after ####) or "
        "openmathinstruct (the answer as is). Filled in for GRPO/GSPO recipes without rewards:, as FAI-RL does.",
        choices=(None, "gsm8k", "openmathinstruct"),
    )
    s3_region: Optional[str] = _f(None, help="name s3://...: the bucket's region (null: boto3's default).")
    s3_endpoint_url: Optional[str] = _f(None, help="name s3://...: an S3-compatible endpoint (null: AWS).")


@dataclass
class DataConfig:
    """Where the examples come from and how they become tokens."""

    datasets: list[DatasetSpec] = _f(help="Training data sources, concatenated in order.")
    eval_datasets: list[DatasetSpec] = _f([], help="Held-out data for evaluation (same format as `datasets`).")
    eval_split_ratio: float = _f(
        0.0, help="Hold out this fraction of the training rows for evaluation when no eval_datasets are given."
    )
    max_length: int = _f(1024, help="Longest tokenised example; longer ones are truncated (counted in --dry-run).")
    system_prompt: Optional[str] = _f(
        None,
        help="System message put first in every conversation that does not already have one. With dataset_columns "
        "(SFT, FAI-RL's meaning) a str.format template over the row's columns: {col} is filled, {{ and }} are literal "
        "braces; alone it is the whole training text, with user_prompt/assistant_prompt the system turn.",
    )
    user_prompt: Optional[str] = _f(
        None, help="SFT: template of the user turn over dataset_columns (set with assistant_prompt; loss on the reply)."
    )
    assistant_prompt: Optional[str] = _f(
        None, help="SFT: template of the assistant turn over dataset_columns (set with user_prompt)."
    )
    max_prompt_length: Optional[int] = _f(
        None,
        help="GRPO/GSPO (FAI-RL's meaning): the prompt's share of max_length; when set and "
        "training.max_completion_length is not, completions get max_length - max_prompt_length tokens. --dry-run "
        "counts longer prompts.",
    )
    remove_unused_columns: bool = _f(
        False,
        help="Drop dataset columns the model does not read (TrainingArguments.remove_unused_columns). fai-rl hands "
        "the trainers model inputs only, and reward functions always receive every column.",
    )
    dataset_num_proc: int = _f(1, help="Processes that tokenise the data (datasets.map num_proc).")
    loss_on: str = _f(
        "assistant",
        help="Which tokens carry the SFT loss: assistant (every assistant turn), last_assistant (the final "
        "assistant turn), completion (the completion of prompt/completion rows; the final turn of chats), all "
        "(every token). Plain-text rows always train on every token.",
        choices=("assistant", "last_assistant", "completion", "all"),
    )
    shuffle_seed: Optional[int] = _f(None, help="Shuffle the training rows once with this seed (null: keep order).")


@dataclass
class TrainingConfig:
    """The algorithm, the backend and the optimisation."""

    algorithm: str = _f(help="Post-training algorithm.", choices=ALGORITHMS)
    backend: str = _f("local", help="Where training runs: local (this machine's CPU/GPUs) or tinker.", choices=BACKENDS)
    output_dir: str = _f(help="Directory for every artefact of the run (created when training starts).")
    overwrite_output_dir: bool = _f(
        False, help="Allow starting a new run in an output_dir that already holds one (its files are replaced)."
    )
    learning_rate: float = _f(5e-5, help="Peak learning rate.")
    num_train_epochs: float = _f(1.0, help="Passes over the training data (ignored when max_steps is set).")
    max_steps: Optional[int] = _f(
        None, help="Stop after this many optimizer steps (null or -1: run num_train_epochs)."
    )
    per_device_train_batch_size: int = _f(8, help="Examples per device per forward pass.")
    per_device_eval_batch_size: int = _f(8, help="Examples per device per evaluation forward pass.")
    gradient_accumulation_steps: int = _f(1, help="Forward passes per optimizer step.")
    warmup_steps: int = _f(0, help="Steps of linear learning-rate warm-up.")
    lr_scheduler_type: str = _f("linear", help="Learning-rate schedule after warm-up.", choices=LR_SCHEDULERS)
    optim: str = _f("adamw_torch", help="Optimizer (8-bit and paged variants need bitsandbytes).", choices=OPTIMIZERS)
    weight_decay: float = _f(0.0, help="AdamW weight decay.")
    max_grad_norm: float = _f(1.0, help="Clip the gradient norm to this value (0 disables clipping).")
    seed: int = _f(42, help="Seed for weights of new heads, data order, dropout and sampling.")
    bf16: Optional[bool] = _f(
        None, help="bfloat16 mixed precision; null: on when the GPU supports it, off on CPU."
    )
    fp16: bool = _f(False, help="float16 mixed precision (TrainingArguments.fp16; GPUs without bfloat16).")
    gradient_checkpointing: Optional[bool] = _f(
        False,
        help="Recompute activations in the backward pass to save memory (~1/3 more compute); null: on only when the "
        "estimated activations would not fit the GPU (off on CPU). Local SFT/DPO/GRPO/GSPO; PPO reads null as off.",
    )
    packing: bool = _f(
        False, help="SFT: pack several examples into each max_length sequence (CPT always packs its text)."
    )
    dataloader_num_workers: int = _f(0, help="Worker processes loading batches (0: the training process).")
    dataloader_pin_memory: Optional[bool] = _f(None, help="Pin batches in page-locked memory; null: on with a GPU.")
    dataloader_drop_last: bool = _f(False, help="Drop the last incomplete batch of each epoch.")
    ddp_find_unused_parameters: bool = _f(
        False, help="DDP: search the graph for parameters without gradients every step (only for models that need it)."
    )
    save_only_model: bool = _f(
        False,
        help="Checkpoints hold the weights only (no optimizer, scheduler or RNG state): smaller, but --resume restarts "
        "the optimizer (it says so).",
    )
    prediction_loss_only: bool = _f(
        False, help="Evaluations compute the loss only (TrainingArguments.prediction_loss_only)."
    )
    use_liger_kernel: Optional[bool] = _f(
        None,
        help="Liger Triton kernels (RMSNorm, RoPE, SwiGLU) for SFT and DPO; null: on with a CUDA GPU when liger-kernel "
        "is installed (pip install 'fai-rl[liger]'), else off.",
    )
    fast_generation: Optional[bool] = _f(
        None,
        help="GRPO/GSPO: sample with a static KV cache and a compiled, CUDA-graphed decode step (same sampling, far "
        "less per-token overhead; the first step compiles); null: on with a CUDA GPU, off on CPU.",
    )
    logging_steps: int = _f(10, help="Write metrics every this many optimizer steps.")
    save_steps: int = _f(500, help="Save a resumable checkpoint every this many optimizer steps.")
    save_total_limit: Optional[int] = _f(None, help="Keep at most this many checkpoints (null: keep all).")
    eval_steps: Optional[int] = _f(
        None,
        help="Evaluate every this many steps; null evaluates only before and after training. Needs eval data.",
    )
    metric_for_best_model: Optional[str] = _f(
        None,
        help="Keep the best checkpoint by this eval metric (e.g. eval_loss, eval_reward; the eval_ prefix may be "
        "left out); recorded as best_checkpoint / best_metric in summary.json. Needs eval data and eval_steps, and "
        "save_steps a multiple of eval_steps. Local backend only.",
    )
    greater_is_better: Optional[bool] = _f(
        None, help="Whether a higher metric_for_best_model is better; null: false for names ending in loss, else true."
    )
    load_best_model_at_end: bool = _f(
        False, help="Save final/ from the best checkpoint (by metric_for_best_model) instead of the last step."
    )
    deepspeed_config: Optional[str] = _f(
        None,
        help="DeepSpeed instead of DDP: a shipped config (zero1, zero2, zero3, zero3_offload; files in "
        "recipes/deepspeed/) or the path of your own JSON. Its \"auto\" values (micro batch, gradient accumulation, "
        "clipping, bf16) are filled from this recipe. Null: DDP.",
    )
    # --- DPO (and the KL strength of GRPO, GSPO and PPO)
    beta: Optional[float] = _f(
        None,
        help="KL strength: DPO's beta (default 0.1); GRPO/GSPO's KL coefficient to the reference (default 0: no "
        "reference model). null takes the algorithm's default.",
    )
    dpo_loss_type: list[str] = _f(
        ["sigmoid"], help="DPO loss, or several combined with dpo_loss_weights: " + ", ".join(DPO_LOSSES) + "."
    )
    dpo_loss_weights: Optional[list[float]] = _f(None, help="DPO: one weight per dpo_loss_type entry (null: all 1).")
    label_smoothing: float = _f(0.0, help="DPO: probability that a preference label is flipped (robust/cDPO), in [0, 0.5).")
    precompute_ref_log_probs: bool = _f(
        False, help="DPO: compute the reference log-probs once before training (frees the reference during training)."
    )
    # --- sampling (GRPO, GSPO, PPO)
    num_generations: int = _f(8, help="GRPO/GSPO: completions sampled per prompt (the group), at least 2.")
    num_generations_eval: Optional[int] = _f(
        None,
        help="GRPO/GSPO/PPO: completions sampled per held-out prompt for eval_reward (null: num_generations; PPO: 1).",
    )
    max_completion_length: int = _f(
        256, help="GRPO/GSPO/PPO: longest sampled completion, in tokens; SFT with rewards: longest greedy reply at "
        "each evaluation."
    )
    temperature: float = _f(1.0, help="GRPO/GSPO/PPO: sampling temperature.")
    top_p: float = _f(1.0, help="GRPO/GSPO/PPO: nucleus sampling mass, in (0, 1].")
    # --- GRPO / GSPO
    epsilon: Optional[float] = _f(None, help="GRPO/GSPO: lower clip of the importance ratio (grpo 0.2, gspo 3e-4).")
    epsilon_high: Optional[float] = _f(
        None, help="GRPO/GSPO: upper clip of the importance ratio (grpo: = epsilon, gspo 4e-4)."
    )
    loss_type: Optional[str] = _f(
        None, help="GRPO/GSPO: loss normalisation (grpo default dapo, gspo default grpo).", choices=(None, *GRPO_LOSSES)
    )
    importance_sampling_level: Optional[str] = _f(
        None, help="GRPO/GSPO: token or sequence importance ratios (grpo token, gspo sequence).",
        choices=(None, "token", "sequence"),
    )
    scale_rewards: str = _f(
        "group", help="GRPO/GSPO: divide advantages by the reward std of the group, the batch, or not at all.",
        choices=("group", "batch", "none"),
    )
    num_iterations: int = _f(1, help="GRPO/GSPO: optimisation passes over each generated batch (mu).")
    steps_per_generation: Optional[int] = _f(
        None, help="GRPO/GSPO: optimizer steps per generation round (null: gradient_accumulation_steps)."
    )
    mask_truncated_completions: bool = _f(
        False, help="GRPO/GSPO: leave completions cut at max_completion_length out of the loss."
    )
    use_vllm: bool = _f(False, help="GRPO/GSPO: generate with vLLM (needs vllm installed; not on CPU).")
    vllm_mode: str = _f(
        "colocate", help="vLLM placement: colocate (same GPUs) or server (a `trl vllm-serve` process).",
        choices=("colocate", "server"),
    )
    # --- PPO
    kl_coef: float = _f(0.05, help="PPO: coefficient of the per-token KL penalty to the reference policy.")
    gamma: float = _f(1.0, help="PPO: discount factor, in [0, 1].")
    lam: float = _f(0.95, help="PPO: GAE lambda, in [0, 1].")
    cliprange: float = _f(0.2, help="PPO: clip range of the policy ratio.")
    cliprange_value: float = _f(0.2, help="PPO: clip range of the value update.")
    vf_coef: float = _f(0.1, help="PPO: weight of the value loss.")
    num_ppo_epochs: int = _f(4, help="PPO: optimisation epochs over each batch of rollouts.")
    num_mini_batches: int = _f(1, help="PPO: mini-batches each rollout batch is split into per epoch.")
    whiten_advantages: bool = _f(True, help="PPO: normalise advantages to zero mean, unit variance per batch.")
    missing_eos_penalty: Optional[float] = _f(
        None, help="PPO: subtract this from the reward of completions that never emit EOS (null: no penalty)."
    )


@dataclass
class WandbConfig:
    """Weights & Biases logging; without an API key runs are written offline into output_dir."""

    enabled: bool = _f(False, help="Log the run to Weights & Biases.")
    project: str = _f("fai-rl", help="W&B project.")
    entity: Optional[str] = _f(None, help="W&B team or user (null: your default entity).")
    name: Optional[str] = _f(None, help="Run name (null: W&B picks one).")
    tags: list[str] = _f([], help="Run tags.")
    mode: str = _f(
        "auto",
        help="auto (online when an API key is configured, else offline), online, offline.",
        choices=("auto", "online", "offline"),
    )
    base_url: Optional[str] = _f(None, help="W&B server for self-hosted deployments (WANDB_BASE_URL); null: the default.")
    api_key: Optional[str] = _f(
        None, help="Must stay null: the key comes from WANDB_API_KEY or `wandb login`, never from a recipe."
    )


@dataclass
class S3Config:
    """Uploads of checkpoints and the final model to S3 or an S3-compatible store (FAI-RL's `s3:` section).

    Credentials come from the environment / boto3's chain only (AWS_ACCESS_KEY_ID, ~/.aws, an instance role).
    """

    enabled: bool = _f(False, help="Upload checkpoints and the final model.")
    bucket: str = _f("", help="Bucket name (required when enabled).")
    prefix: str = _f("", help="Key prefix: uploads go to s3://bucket/prefix/checkpoint-N/ and .../final/.")
    region: Optional[str] = _f(None, help="Region (null: AWS_DEFAULT_REGION or boto3's default).")
    endpoint_url: Optional[str] = _f(None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (null: AWS S3).")
    upload_checkpoints: bool = _f(True, help="Upload each checkpoint-N when it is saved (in the background).")
    upload_final_model: bool = _f(True, help="Upload final/ at the end of training.")
    delete_local_after_upload: bool = _f(
        False, help="Delete a local checkpoint once its upload is complete and verified (--resume fetches it back)."
    )
    uploader: str = _f(
        "auto", help="auto (s5cmd when on PATH, else boto3), boto3, or s5cmd.", choices=("auto", "boto3", "s5cmd")
    )
    max_retries: int = _f(3, help="Attempts per upload after the first, with backoff, before it is reported failed.")


@dataclass
class RewardSpec:
    """One reward function (used by the RL algorithms)."""

    function: str = _f(help="A built-in reward name, `module:function`, or `path/to/file.py:function`.")
    weight: float = _f(1.0, help="Weight of this reward in the sum.")
    kwargs: dict[str, Any] = _f({}, help="Keyword arguments passed to the function.")


@dataclass
class TinkerConfig:
    """The Tinker backend (hosted training API). The API key comes from TINKER_API_KEY only."""

    base_url: Optional[str] = _f(None, help="Service URL (null: the SDK's default, or TINKER_BASE_URL).")
    lora_rank: int = _f(32, help="LoRA rank of the Tinker training client (LoRA is implied on Tinker).")
    train_mlp: bool = _f(True, help="Train LoRA on the MLP layers.")
    train_attn: bool = _f(True, help="Train LoRA on the attention layers.")
    train_unembed: bool = _f(True, help="Train LoRA on the unembedding (output) layer.")
    adam_beta1: float = _f(0.9, help="Adam beta1 of the service's optimizer.")
    adam_beta2: float = _f(0.95, help="Adam beta2 of the service's optimizer.")
    adam_eps: float = _f(1e-8, help="Adam epsilon of the service's optimizer.")
    save_every: Optional[int] = _f(
        None, help="save_state (weights + optimizer) every this many steps (null: training.save_steps); always at the end."
    )
    checkpoint_ttl_s: Optional[int] = _f(
        None, help="Seconds the service keeps this run's checkpoints (null: the service's default)."
    )
    resume_from: Optional[str] = _f(
        None, help="A tinker://.../weights/... state to start from, with its optimizer (--resume uses checkpoints.json)."
    )
    rl_loss: str = _f(
        "importance_sampling", help="GRPO: the service loss for sampled completions (GSPO always uses a sequence ratio).",
        choices=("importance_sampling", "ppo"),
    )
    ppo_baseline: str = _f(
        "batch_mean",
        help="PPO on Tinker has no learned critic (no value head): advantage = reward minus this baseline.",
        choices=("batch_mean", "ema", "none"),
    )
    request_timeout_s: float = _f(
        600.0, help="Longest wait for one service call before the run stops with the resume path (never a hang)."
    )
    max_retries: int = _f(3, help="Retries (with backoff) of calls that are safe to repeat: sampling and saving.")
    download_final: bool = _f(
        True, help="Download the final adapter into output_dir/final/ as a PEFT adapter (false: record its path only)."
    )


# The judge prompt's placeholders (fai_rl.workflows.solver_judge renders them; rules.py checks them).
JUDGE_PLACEHOLDERS = ("problem", "solutions", "num_solutions")
DEFAULT_JUDGE_PROMPT = (
    "You are an expert verifier. Given a problem and {num_solutions} attempted solutions, select a correct one.\n"
    "Problem:\n{problem}\nSolutions:\n{solutions}\n"
    "Output the number of a correct solution within <answer>...</answer> tags, e.g. <answer>1</answer>."
)


@dataclass
class WorkflowConfig:
    """GRPO/GSPO over multi-step workflows: the same policy plays several roles (docs/workflows.md)."""

    type: str = _f(
        "single",
        help="single (one completion per prompt: plain GRPO/GSPO), solver_judge (solvers propose num_solutions "
        "answers, a judge played by the same model picks one; both roles trained), or module:Class / "
        "path/to/file.py:Class for your own workflow.",
    )
    num_solutions: int = _f(2, help="solver_judge: solutions the solver proposes per episode (the judge picks one).")
    solver_prompt: Optional[str] = _f(
        None,
        help="The solver's user message, a template over the row's columns, e.g. 'Using the numbers {nums}, make "
        "{target}.' (null: the row's prompt column, as plain GRPO uses it).",
    )
    judge_prompt: str = _f(
        DEFAULT_JUDGE_PROMPT,
        help="solver_judge: the judge's user message; placeholders {problem} (the solver's prompt text), "
        "{solutions} (the candidates, one judge_solution_format each, joined by newlines), {num_solutions}.",
    )
    judge_solution_format: str = _f(
        "Solution {index}: {solution}",
        help="solver_judge: how each candidate is shown to the judge; placeholders {index} (from 1) and {solution}.",
    )
    solver_reward: float = _f(1.0, help="solver_judge: the solver's reward is this times the recipe rewards' total.")
    judge_reward: float = _f(
        1.0, help="solver_judge: the judge's reward is this when the solution it picks is correct, else 0."
    )
    correct_threshold: float = _f(
        1.0,
        help="A solution counts as correct (for the judge's reward, pass@k and judge accuracy) when the recipe "
        "rewards' total reaches this; countdown gives 1.0 for a right equation and 0.1 for a well-formed miss.",
    )
    grouping: str = _f(
        "trajectory",
        help="GRPO groups: trajectory (rLLM's default: the trajectories of one role over the num_generations "
        "episodes of a task form a group; each trajectory's reward is broadcast to its steps) or step (steps at the "
        "same position of one role are grouped, each with its own reward).",
        choices=("trajectory", "step"),
    )
    norm_adv_by_std: bool = _f(True, help="Divide advantages by their group's std (population std, as rLLM).")
    kwargs: dict[str, Any] = _f({}, help="module:Class workflows: keyword arguments passed to the class.")


@dataclass
class Recipe:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    rewards: list[RewardSpec] = _f(
        [], help="Reward functions for the RL algorithms, summed with their weights; in SFT, metrics of greedy replies "
        "to the held-out prompts at each evaluation (eval_reward)."
    )
    tinker: TinkerConfig = field(default_factory=TinkerConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    s3: S3Config = field(default_factory=S3Config)


# ----------------------------------------------------------------------------------------------------------------------
# fai-rl-eval: a second recipe type, loaded by the same machinery (fai_rl.config.load.load_eval_recipe).

EVAL_TASK_TYPES = ("generate", "multiple_choice", "workflow")  # fai_rl.evaluation.run.TASK_TYPES runs each
# workflow: the workflow's own metrics (solver and solver+judge pass@k, judge accuracy, reward per role)
EVAL_METRICS = {"generate": ("exact_match", "numeric"), "multiple_choice": ("accuracy",), "workflow": ("workflow",)}


@dataclass
class EvalTaskConfig:
    """One evaluation task: a dataset, how the model answers it, and how answers are scored."""

    name: str = _f(help="Name of the task in the table, results.json and samples.jsonl.")
    dataset: DatasetSpec = _f(
        help="The data: a local file, dataset dir, hub dataset or built-in task (fai-rl/digits) with its split and "
        "columns (prompt_column or messages_column, answer_column), as in data.datasets."
    )
    type: str = _f(
        "generate",
        help="generate: the model writes an answer, scored by `metrics` and `rewards`; multiple_choice: the model "
        "picks one of `choices_column` (by log-likelihood or a generated letter, see multiple_choice_mode); "
        "workflow: the workflow of `workflow_recipe` is run num_samples times per prompt (solver and solver+judge "
        "pass@k, judge accuracy).",
        choices=EVAL_TASK_TYPES,
    )
    metrics: list[str] = _f(
        [],
        help="generate: exact_match (normalised text equals the answer), numeric (final numbers equal, GSM8K-style "
        "extraction as the math_answer reward); multiple_choice: accuracy. Empty: exact_match, resp. accuracy.",
    )
    rewards: list[RewardSpec] = _f(
        [], help="Reward functions (as in a training recipe's rewards:) scored as extra metrics, named reward/<name>."
    )
    num_samples: int = _f(1, help="Completions sampled per prompt (n of pass@k); > 1 needs temperature > 0.")
    pass_k: list[int] = _f(
        [], help="The k of pass@k reported for each metric, each in 1..num_samples (empty: 1 and num_samples)."
    )
    pass_threshold: float = _f(
        1.0, help="A sample counts as correct for pass@k when its metric score is at least this (rewards may be "
        "fractional)."
    )
    temperature: float = _f(0.0, help="Sampling temperature; 0 is greedy decoding.")
    top_p: float = _f(1.0, help="Nucleus sampling mass, in (0, 1].")
    max_new_tokens: int = _f(256, help="Longest generated answer, in tokens.")
    system_prompt: Optional[str] = _f(None, help="System message put first in every prompt that has none.")
    chat_template: bool = _f(
        True, help="Render prompts with the model's chat template (false: the prompt text as plain text)."
    )
    choices_column: str = _f("choices", help="multiple_choice: the column with the list of choice texts.")
    multiple_choice_mode: str = _f(
        "loglikelihood",
        help="multiple_choice: loglikelihood (each choice's text scored as the reply; the most likely is the pick) "
        "or generate (the choices are listed as A., B., ... and the first letter generated is the pick).",
        choices=("loglikelihood", "generate"),
    )
    length_normalize: bool = _f(
        False, help="multiple_choice loglikelihood: compare mean per-token log-probs instead of sums."
    )
    numeric_tolerance: float = _f(1e-6, help="numeric: largest absolute difference counted as equal.")
    workflow_recipe: Optional[str] = _f(
        None, help="workflow: a training recipe whose workflow: and rewards: sections define what runs and how it is "
        "scored (e.g. recipes/quickstart/solver_judge.yaml); this task's dataset supplies the problems."
    )


@dataclass
class EvaluationConfig:
    """Which models to evaluate on which tasks, and where the results go."""

    models: list[str] = _f(
        help="Models to evaluate: run dirs (their final/), final/ or checkpoint-N dirs, LoRA adapter dirs, hub ids, "
        "built-in models (fai-rl/tiny-sft) or tinker:// sampler paths."
    )
    tasks: list[EvalTaskConfig] = _f(help="The tasks every model is evaluated on.")
    baseline: Optional[str] = _f(
        None, help="A model (same forms as models) evaluated too and shown side by side, with each model's difference."
    )
    base_model: Optional[str] = _f(
        None,
        help="Base model of tinker:// paths (its tokenizer renders the prompts), e.g. Qwen/Qwen3-4B-Instruct-2507.",
    )
    output_dir: Optional[str] = _f(
        None, help="Where results.json and samples.jsonl go (null: <run dir of the first model>/eval)."
    )
    batch_size: int = _f(64, help="Sequences (prompts x samples) generated together on a local model.")
    device: Optional[str] = _f(None, help="Local device: cpu, cuda, cuda:1 (null: a GPU when there is one).")
    dtype: str = _f(
        "auto", help="Local weights dtype (auto: bfloat16 on a capable GPU, else float32).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    seed: int = _f(0, help="Sampling seed (the same recipe samples the same completions on the same machine).")
    tinker_base_url: Optional[str] = _f(
        None, help="Tinker service URL for tinker:// models (null: TINKER_BASE_URL, else the SDK default)."
    )
    request_timeout_s: float = _f(600.0, help="Longest wait for one Tinker request.")


@dataclass
class EvalRecipe:
    """An evaluation recipe (fai-rl-eval)."""

    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
