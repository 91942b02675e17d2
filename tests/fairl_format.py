"""Recipes written the way Roblox FAI-RL's recipe template writes them (its layout and key names are facts; the files
are ours): every key its template puts into a training recipe, with FAI-RL's values, pointed at tiny local models
and data. Tests fill the model, data and a few training numbers in.
"""

from __future__ import annotations

import textwrap

# What FAI-RL's template writes under `training:` for each algorithm besides the common keys.
_PER_ALGORITHM = {
    "sft": "",
    "cpt": "  ddp_find_unused_parameters: false\n",
    "dpo": "  save_only_model: true\n  prediction_loss_only: true\n",
    "grpo": "  save_only_model: true\n  prediction_loss_only: true\n  num_generations: 8\n",
    "gspo": ("  save_only_model: true\n  prediction_loss_only: true\n  num_generations: 8\n  beta: 0\n"
             "  epsilon: 3e-4\n  epsilon_high: 4e-4\n  steps_per_generation: 4\n"),
    "ppo": "  gamma: 1.0\n  lam: 0.95\n  cliprange: 0.2\n  cliprange_value: 0.2\n  vf_coef: 0.1\n",
}


def fairl_recipe(algorithm: str, output_dir, datasets: str, *, model: str = "fai-rl/tiny", data_extra: str = "",
                 training_extra: str = "", model_extra: str = "", max_length: int = 2048,
                 max_prompt_length: int = 1024, batch: int = 1, accumulation: int = 16, learning_rate: str = "1.0e-4",
                 max_steps: int = -1, lora: bool = True) -> str:
    """A FAI-RL-layout recipe. `datasets` is the YAML list under data.datasets (indented two spaces)."""
    text = f"""\
# Model Configuration
# Defines the base model and its loading parameters
model:
  base_model_name: "{model}"   # HuggingFace model name or local path
  torch_dtype: "bfloat16"                               # Data type for model weights (bfloat16/float16/float32)
  low_cpu_mem_usage: true                               # Reduce CPU memory usage during model loading
  load_in_8bit: false                                   # Enable 8-bit quantization
  load_in_4bit: false                                   # Enable 4-bit quantization (for QLoRA)
  use_flash_attention: false                            # Use Flash Attention for faster training (if supported)
{model_extra}
  # LoRA configuration (for parameter-efficient fine-tuning)
  use_lora: {str(lora).lower()}                                        # Enable LoRA
  lora_r: 8                                             # LoRA rank (8 for LoRA, 16 for QLoRA)
  lora_alpha: 16                                        # LoRA alpha scaling factor (typically 2x rank)
  lora_dropout: 0.05                                    # LoRA dropout rate
  lora_target_modules:                                  # Target modules for LoRA
    - q_proj
    - v_proj
    - k_proj
    - o_proj
    - gate_proj
    - up_proj
    - down_proj
  lora_bias: "none"                                     # Bias handling: "none", "all", or "lora_only"

# Data Configuration
data:
  datasets:
{textwrap.indent(textwrap.dedent(datasets).strip(), "    ")}

  max_length: {max_length}                                      # Maximum sequence length for model input
  max_prompt_length: {max_prompt_length}                               # Maximum length for prompts
  remove_unused_columns: false                          # Keep all dataset columns (set true to save memory)
{data_extra}
# Training Configuration
training:
  algorithm: "{algorithm}"                                      # Training algorithm
  output_dir: "{output_dir}"         # Directory to save trained model and checkpoints

  per_device_train_batch_size: {batch}                        # Batch size per GPU
  gradient_accumulation_steps: {accumulation}                       # Steps to accumulate gradients
  learning_rate: {learning_rate}                                 # Learning rate
  num_train_epochs: 1                                   # Number of complete passes through the dataset
  max_steps: {max_steps}                                         # Maximum number of training steps (-1 = epochs)
  warmup_steps: 100                                     # Linear warmup steps for learning rate scheduler

  logging_steps: 5                                      # Log training metrics every N steps
  save_steps: 50                                        # Save model checkpoint every N steps
  eval_steps: 50                                        # Evaluate model every N steps

  bf16: true                                            # Use bfloat16 precision
  fp16: false                                           # Use float16 precision (alternative to bf16)
  gradient_checkpointing: true                          # Trade compute for memory

  dataloader_num_workers: 0                             # Number of CPU workers for data loading
  dataloader_pin_memory: false                          # Pin memory for faster GPU transfer
  dataloader_drop_last: true                            # Drop last incomplete batch
{_PER_ALGORITHM[algorithm]}{training_extra}
# Weights & Biases Integration
wandb:
  enabled: false                                        # Enable W&B logging
  project: "your-project"                               # W&B project name
  entity: "your-wandb-entity"                           # W&B username or team name
  name: "tiny-{algorithm}"                              # Experiment name in W&B
  tags: ["{algorithm.upper()}", "tiny"]                 # Tags for organizing experiments
  api_key: null                                         # W&B API key (null = use WANDB_API_KEY env var)
  base_url: "https://api.wandb.ai"                      # W&B base URL

# S3 Checkpoint Upload
s3:
  enabled: false                                        # Enable S3 checkpoint upload
  bucket: "your-s3-bucket"                              # S3 bucket name
  prefix: "checkpoints/tiny-{algorithm}"                # S3 key prefix (folder path inside bucket)
  region: null                                          # AWS region (null = AWS_DEFAULT_REGION or boto3 default)
  endpoint_url: null                                    # Custom S3-compatible endpoint (e.g. MinIO)
  upload_checkpoints: true                              # Upload intermediate checkpoints (at every save_steps)
  upload_final_model: true                              # Upload the final model at end of training
  delete_local_after_upload: false                      # Delete local checkpoint files after successful upload
"""
    return text


def fairl_inference_recipe(section: str, models: str, output_file, dataset, columns: str, system_prompt: str,
                           extra: str = "", temperature: float = 1.0, do_sample: bool = True) -> str:
    """A recipe the way FAI-RL's recipes/inference/*.yaml and recipes/evaluation/*/*.yaml write it (`section` is
    inference or evaluation); `models` the model lines (model_paths list, or model/api_endpoint/api_key), `extra`
    more keys (ground_truth_column, user_prompt, ...), each line indented two spaces."""
    prompt = textwrap.indent(textwrap.dedent(system_prompt).strip() + "\n", "    ")
    return f"""\
# {section.capitalize()} Configuration (FAI-RL layout)
{section}:
  # Model Configuration
{textwrap.indent(textwrap.dedent(models).strip(), "  ")}

  # Path to save results (CSV format with input columns + response column)
  output_file: "{output_file}"

  # Dataset Configuration
  dataset_name: "{dataset}"   # HuggingFace dataset identifier or a local file
  dataset_split: "test"                            # Dataset split to use: train, test, or validation
  dataset_columns: {columns}           # List of columns to concatenate as model input
  response_column: "response"                      # Name of column to store model responses (default: "response")
{textwrap.indent(textwrap.dedent(extra).strip(), "  ")}

  # System Prompt
  system_prompt: |
{prompt}
  # Generation Parameters
  temperature: {temperature}            # Sampling temperature (0.0 = deterministic, 2.0 = very random)
  top_p: 0.9                  # Nucleus sampling threshold (0.0-1.0, lower = more focused)
  max_new_tokens: 16          # Maximum number of tokens to generate per response
  do_sample: {str(do_sample).lower()}             # Enable sampling (false = greedy decoding)
"""
