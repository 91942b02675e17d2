"""Recipe sections for the services a run talks to: `wandb:` and `tensorboard:` (logging), `s3:` (uploads) and `tinker:` (the backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fai_rl.config.schema_fields import _f


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
class TensorBoardConfig:
    """TensorBoard event files beside wandb (needs the tensorboard package: pip install 'fai-rl[tensorboard]')."""

    enabled: bool = _f(False, help="Write every metrics.jsonl row as TensorBoard scalars into output_dir/tensorboard/.")


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
        None, help="Seconds (3600 to 10 years) the service keeps the states and samplers saved during the run "
        "(periodic, on stop, the KL reference); the final state and sampler never expire (their TTL is removed). "
        "null: the service's default for all."
    )
    max_steps_off_policy: int = _f(
        0, help="RL and workflows: 0 samples each batch on the weights it trains (on-policy); 1 samples batch N+1 on "
        "the weights before step N's update while step N trains (tinker-cookbook's async mode), one step stale, "
        "corrected by the "
        "importance ratio to the sampler's log-probs that the loss uses; logged as off_policy_steps.",
        choices=(0, 1),
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
