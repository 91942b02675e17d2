"""The recipe's `training:` section: the algorithm, the backend, the optimisation, and the keys of each algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fai_rl.config.schema_fields import (
    ALGORITHMS,
    BACKENDS,
    DPO_LOSSES,
    GRPO_LOSSES,
    LR_SCHEDULERS,
    OPTIMIZERS,
    _f,
)


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
    padding_free: Optional[bool] = _f(
        None,
        help="SFT and DPO: lay each batch's rows (DPO: every chosen and rejected sequence) end to end in one "
        "sequence (position ids restart per row, attention stays inside each row), so no compute goes to padding; the "
        "same loss and gradients as the padded batch. null: on for SFT and DPO where a varlen attention kernel exists "
        "(a CUDA GPU: torch's varlen_attn or flash-attention 2), off on CPU, where masked attention over the whole row "
        "is slower than padding.",
    )
    fast_generation: Optional[bool] = _f(
        None,
        help="GRPO/GSPO/RLOO/PPO: sample with fai-rl's graph decoder, the whole decode step (forward, sampling, stop "
        "bookkeeping) replayed as one CUDA graph (same distribution, far less per-token overhead); null: on with a CUDA "
        "GPU, off on CPU (HF generate).",
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
    log_rollouts_every: int = _f(
        10,
        help="GRPO/GSPO/RLOO/PPO: at step 1 and every this many steps, write a few prompts with their sampled "
        "completions, rewards and advantages to output_dir/rollouts/step-N.jsonl and step-N.html (and a wandb table "
        "when wandb is on); 0: never.",
    )
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
    drop_zero_variance_groups: bool = _f(
        False, help="GRPO/GSPO/RLOO: leave groups whose rewards are all equal (advantage 0) out of the update, as "
        "DAPO's dynamic sampling filters them (without resampling); logged as groups_dropped (a count per batch). "
        "No optimizer step when every group is flat; the loss is normalised over the kept tokens / sequences only. "
        "Tinker: fewer tokens sent (batches of varying size). Local: the flat rows are masked out of TRL's loss (they "
        "still cost their forward pass). Workflows (both backends): a group is one role's trajectories of one task "
        "(or steps at one position, with workflow.grouping step).",
    )
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
