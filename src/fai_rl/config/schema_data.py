"""Recipe sections for what is trained on what: `model:`, `data:` and each `data.datasets[]` entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fai_rl.config.schema_fields import _f


@dataclass
class ModelConfig:
    """What to train and how to load it."""

    base_model_name: str = _f(
        help="Model to start from: a hub id (e.g. Qwen/Qwen3-0.6B), a local HF model dir, or the built-in "
        "`fai-rl/tiny` (no download). On the Tinker backend: the Tinker base model name."
    )
    init_from: Optional[str] = _f(
        None, help="Start from these weights with a fresh optimizer and step 0 (SFT -> RL). Local: a run's output_dir "
        "(its final/, else its latest checkpoint-N) or a final/ or checkpoint-N dir; a LoRA adapter is merged into "
        "its base (which must be model.base_model_name) and a new LoRA goes on top. Tinker: a Tinker run's "
        "output_dir (its last saved state) or a tinker://.../weights/... state. The KL reference (training.beta > "
        "0) is this start, not the base model. (--resume and tinker.resume_from also load the optimizer state.)",
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
    max_length: int = _f(1024, help="Longest tokenised example; longer ones are truncated, never silently: counted in "
                         "--dry-run, said in one note per run and logged as truncated_* in metrics.jsonl (SFT rows and "
                         "DPO pairs lose their end; RL prompts their start, the same tokens on both backends).")
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
