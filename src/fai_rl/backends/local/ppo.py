"""PPO for language models on the local backend, written on transformers + accelerate + peft (TRL dropped PPO in 1.13).

Papers: the clipped objective and GAE of Schulman et al. 2017 ("Proximal Policy Optimization Algorithms") and 2016
("High-Dimensional Continuous Control Using GAE"); the RLHF setting of Ziegler et al. 2019, Stiennon et al. 2020 and
Ouyang et al. 2022 (a sequence-level score, a per-token KL penalty to a frozen reference policy, a learned critic);
the details of Huang et al. 2024 ("The N+ Implementation Details of RLHF with PPO"): logprobs from a forward pass of
the sampled text at the sampling temperature, dropout off, a clipped value loss with a 0.5 factor, advantages
whitened per batch, a fixed penalty for completions without EOS.

How this departs from them:
- Rewards come from the recipe's reward functions (fai_rl.rewards), optionally plus a sequence-classification reward
  model; the papers use a reward model only. The KL coefficient is fixed (no adaptive KL controller) and the KL is
  the k1 estimate `logprob - ref_logprob` of the sampled tokens.
- With `model.value_model_name: null` the critic is a linear head on the policy's own last hidden state (one forward
  pass gives logits and values, no second model in memory); its gradients then also move the shared trunk, which can
  disturb the policy (`vf_coef` sets how much). The papers use a separate value model: set value_model_name for that.
- With LoRA the reference is the same network with the adapter switched off, not a second copy.
- One completion per prompt per step; the learning-rate schedule steps once per PPO step (so warmup_steps and
  max_steps count the same steps), while each step makes num_ppo_epochs x num_mini_batches optimizer updates.
- Batch sizes have TRL's PPO meaning: a step's rollout is per_device_train_batch_size x gradient_accumulation_steps
  prompts per process, split into num_mini_batches mini-batches; each mini-batch's gradient is accumulated over
  micro-batches of per_device_train_batch_size before its one optimizer step (the forward passes of the rollout run
  in micro-batches too, so per_device_train_batch_size bounds activation memory). (TRL's PPOConfig also multiplies
  the rollout by num_mini_batches; FAI-RL's recipes leave that at 1, where the two agree.)
- Several processes run as DDP or DeepSpeed ZeRO-1/2/3 through accelerate (each samples its own prompts). Under
  ZeRO-3 the policy and critic are sharded when DeepSpeed wraps them (they load whole on each process first, and the
  frozen reference stays whole on each process), and their shards are gathered once per rollout for generation.
  Checkpoints then hold DeepSpeed's own sharded optimizer state next to the gathered HF weights.

Tensor names carry their shapes: b = batch, s = prompt + completion positions, t = completion positions, v = vocab.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from fai_rl.artifacts import RunDir, checkpoints
from fai_rl.backends.local.common import (
    ResumePoint,
    check_precision,
    find_resume_point,
    peak_gpu_memory_gib,
    save_final,
    start_cpu_processes,
)
from fai_rl.config.deepspeed import resolve_deepspeed_config, zero_stage
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import render_prompts
from fai_rl.s3 import Uploads
from fai_rl.sampling import stop_token_ids
from fai_rl.models.load import (
    accelerator,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    resolve_model_path,
    torch_dtype,
    use_bf16,
)

# --------------------------------------------------------------------------------------------------------------------
# The maths: small pure functions on tensors. Masks are 1.0 on real completion tokens, 0.0 on padding after EOS.


def masked_mean(x_bt: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1."""
    return (x_bt * mask_bt).sum() / mask_bt.sum().clamp(min=1)


def masked_whiten(x_bt: torch.Tensor, mask_bt: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """x normalised to zero mean and unit variance over the masked positions (padding stays 0)."""
    mean = masked_mean(x_bt, mask_bt)
    var = masked_mean((x_bt - mean) ** 2, mask_bt)
    whitened = (x_bt - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_bt


def compute_gae(
    rewards_bt: torch.Tensor, values_bt: torch.Tensor, mask_bt: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (advantages + values).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, with V and A zero after the last
    real token (the episode ends at EOS or at max_completion_length). The mask is a prefix: padding only at the end.
    """
    rewards_bt, values_bt = rewards_bt * mask_bt, values_bt * mask_bt
    advantages_bt = torch.zeros_like(rewards_bt)
    next_value_b = torch.zeros_like(rewards_bt[:, 0])
    next_advantage_b = torch.zeros_like(rewards_bt[:, 0])
    for t in reversed(range(rewards_bt.shape[1])):
        delta_b = rewards_bt[:, t] + gamma * next_value_b - values_bt[:, t]
        next_advantage_b = delta_b + gamma * lam * next_advantage_b
        advantages_bt[:, t] = next_advantage_b
        next_value_b = values_bt[:, t]
    advantages_bt = advantages_bt * mask_bt
    return advantages_bt, (advantages_bt + values_bt) * mask_bt


def per_token_rewards(
    score_b: torch.Tensor,
    logprobs_bt: torch.Tensor,
    ref_logprobs_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """-kl_coef * (logprob - ref_logprob) on every real token, plus the sequence score on the last real token."""
    rewards_bt = -kl_coef * (logprobs_bt - ref_logprobs_bt) * mask_bt
    last_b = mask_bt.sum(dim=1).long().clamp(min=1) - 1
    rewards_bt[torch.arange(len(score_b)), last_b] += score_b
    return rewards_bt


def policy_loss(
    new_logprobs_bt: torch.Tensor,
    old_logprobs_bt: torch.Tensor,
    advantages_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean of max(-A r, -A clip(r, 1 - c, 1 + c)); also the clipped fraction and approx KL.

    approx_kl is 0.5 * mean(log r ** 2), the estimate Huang et al. 2024 log to watch how far an update strays.
    """
    log_ratio_bt = new_logprobs_bt - old_logprobs_bt
    ratio_bt = torch.exp(log_ratio_bt)
    unclipped_bt = -advantages_bt * ratio_bt
    clipped_bt = -advantages_bt * torch.clamp(ratio_bt, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped_bt, clipped_bt), mask_bt)
    clipfrac = masked_mean((clipped_bt > unclipped_bt).float(), mask_bt)
    approx_kl = 0.5 * masked_mean(log_ratio_bt.detach() ** 2, mask_bt)
    return loss, clipfrac.detach(), approx_kl


def value_loss(
    new_values_bt: torch.Tensor,
    old_values_bt: torch.Tensor,
    returns_bt: torch.Tensor,
    mask_bt: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip kept within cliprange_value of the old V; and clipfrac."""
    clipped_bt = old_values_bt + torch.clamp(new_values_bt - old_values_bt, -cliprange_value, cliprange_value)
    unclipped_err_bt = (new_values_bt - returns_bt) ** 2
    clipped_err_bt = (clipped_bt - returns_bt) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err_bt, clipped_err_bt), mask_bt)
    clipfrac = masked_mean((clipped_err_bt > unclipped_err_bt).float(), mask_bt)
    return loss, clipfrac.detach()


def explained_variance(values_bt: torch.Tensor, returns_bt: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns): how much of the returns the critic predicts (1 best, <= 0 useless).

    The value loss alone also tracks how noisy the returns are (with 0/1 rewards it grows with p(1 - p) as the
    reward rises), so this is the number that says whether the critic is learning.
    """
    def var(x_bt):
        return masked_mean((x_bt - masked_mean(x_bt, mask_bt)) ** 2, mask_bt)

    return 1 - var(returns_bt - values_bt) / var(returns_bt).clamp(min=1e-8)


def token_logprobs(logits_btv: torch.Tensor, tokens_bt: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature), as the picked logit minus logsumexp (no log-softmax kept)."""
    logits_btv = logits_btv.float() / temperature
    picked_bt = logits_btv.gather(-1, tokens_bt.unsqueeze(-1)).squeeze(-1)
    return picked_bt - torch.logsumexp(logits_btv, dim=-1)


def entropy(logits_btv: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of softmax(logits)."""
    logits_btv = logits_btv.float()
    probs_btv = torch.softmax(logits_btv, dim=-1)
    return torch.logsumexp(logits_btv, dim=-1) - (probs_btv * logits_btv).sum(-1)


# --------------------------------------------------------------------------------------------------------------------
# The models: policy + critic in one nn.Module, so one optimizer and one accelerator.prepare (DDP) cover both.


class PolicyAndCritic(nn.Module):
    """The policy LM and its critic: a scalar head on a separate backbone, or on the policy's own last hidden state."""

    def __init__(self, policy: nn.Module, value_backbone: nn.Module | None, hidden_size: int):
        super().__init__()
        self.policy = policy
        self.value_backbone = value_backbone  # None: the value head reads the policy's hidden states (shared trunk)
        self.config = policy.config  # what DeepSpeed sizes "auto" buckets from (hidden_size)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.value_head.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids_bs, attention_mask_bs, n_completion: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_btv, values_bt) for the last n_completion tokens: each predicted from the position before it."""
        shared = self.value_backbone is None
        out = self.policy(
            input_ids=input_ids_bs,
            attention_mask=attention_mask_bs,
            position_ids=position_ids(attention_mask_bs),
            output_hidden_states=shared,
            logits_to_keep=n_completion + 1,
            use_cache=False,
        )
        if shared:
            hidden_bsh = out.hidden_states[-1]
        else:
            hidden_bsh = self.value_backbone(
                input_ids=input_ids_bs, attention_mask=attention_mask_bs, position_ids=position_ids(attention_mask_bs)
            ).last_hidden_state
        values_bt = self.value_head(hidden_bsh[:, -n_completion - 1 : -1].to(self.value_head.weight.dtype))
        return out.logits[:, :-1], values_bt.squeeze(-1).float()


def position_ids(attention_mask_bs: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token, so left-padded prompts get the positions generate() gave them."""
    return (attention_mask_bs.long().cumsum(-1) - 1).clamp(min=0)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (Huang et al.): the logprobs of an update must match the ones of the rollout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def build_models(recipe: Recipe, start: Path | None) -> tuple[PolicyAndCritic, nn.Module | None]:
    """(policy + critic, frozen reference or None when LoRA's adapter-off policy is the reference).

    `start` is a checkpoint to continue from; the reference always comes from model.base_model_name.
    """
    from transformers import AutoModel

    m = recipe.model
    if m.use_lora:
        from peft import PeftModel, get_peft_model

        base = load_causal_lm(m)
        if start is None:
            policy = get_peft_model(base, lora_config(m))
        else:
            policy = PeftModel.from_pretrained(base, start, is_trainable=True)
        reference = None
    else:
        policy = load_causal_lm(m if start is None else replace(m, base_model_name=str(start)))
        reference = load_causal_lm(m).requires_grad_(False).eval()
    if recipe.training.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    value_backbone = None
    # The critic is AutoModel's backbone of value_model_name plus our fresh value_head, trained from the first step.
    # FAI-RL's PPO also scored rewards with that model (config/fai_rl.py copies it into reward_model_name when there
    # are no rewards:); a causal-LM checkpoint has no trained score head, so the reward loader refuses it
    # (rewards/reward_model.py) instead of scoring with a freshly initialised head.
    if m.value_model_name is not None:
        path = start / "value_model" if start is not None else resolve_model_path(m.value_model_name)
        value_backbone = AutoModel.from_pretrained(path, dtype=torch_dtype(m), trust_remote_code=m.trust_remote_code)
    config = (value_backbone or policy).config
    hidden = config.get_text_config().hidden_size
    model = PolicyAndCritic(policy, value_backbone, hidden)
    if start is not None:
        model.value_head.load_state_dict(torch.load(start / "value_head.pt", map_location="cpu"))
    disable_dropout(model)
    return model, reference


# --------------------------------------------------------------------------------------------------------------------
# prepare / describe: data, rewards and resume point checked before anything is written.


@dataclass
class PreparedPPO:
    tokenizer: object
    train_rows: list[dict]
    eval_rows: list[dict]
    reward_fns: list
    resume: ResumePoint | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedPPO:
    """Tokenizer, prompt rows and reward functions, and the resume point; nothing is written."""
    from fai_rl.data.rl import load_prompt_rows
    from fai_rl.rewards import recipe_rewards

    check_precision(recipe)  # fp16 without a GPU is refused before output_dir is touched
    resume_point = find_resume_point(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    train_rows, eval_rows = load_prompt_rows(recipe)
    return PreparedPPO(tokenizer, train_rows, eval_rows, recipe_rewards(recipe), resume_point)


def describe(recipe: Recipe, prepared: PreparedPPO) -> str:
    """Prompt counts and lengths, two prompts as the model sees them, and what the rewards make of the answers."""
    from fai_rl.rewards import preview_rewards

    p, tok, t = prepared, prepared.tokenizer, recipe.training
    lengths = [len(ids) for ids in render_prompts(tok, p.train_rows)]
    cut = sum(n > recipe.data.max_length for n in lengths)
    lines = [
        f"prompts: {len(p.train_rows)} train, {len(p.eval_rows)} eval; prompt tokens min {min(lengths)} "
        f"max {max(lengths)} mean {sum(lengths) / len(lengths):.1f}; {cut} longer than data.max_length "
        f"{recipe.data.max_length} (left-truncated)",
        f"per step: {rollout_size(recipe)} prompts (per_device_train_batch_size {t.per_device_train_batch_size} x "
        f"gradient_accumulation_steps {t.gradient_accumulation_steps}) x 1 completion (up to "
        f"{t.max_completion_length} tokens), {t.num_ppo_epochs} epochs x {t.num_mini_batches} mini-batches; "
        f"critic: {critic_name(recipe)}",
    ]
    for n, row in enumerate(p.train_rows[:2], start=1):
        text = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        lines.append(f"--- prompt {n} ({lengths[n - 1]} tokens; answer {row.get('answer')!r})")
        lines.append(text.replace("\n", "\\n"))
    lines.append(str(preview_rewards(p.reward_fns, p.train_rows)))
    if p.resume is not None:
        lines.append(f"resume: from {p.resume.path} (step {p.resume.step})")
    return "\n".join(lines)


def rollout_size(recipe: Recipe) -> int:
    """Prompts one process samples per PPO step: per_device_train_batch_size x gradient_accumulation_steps."""
    return recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps


def micro_batches(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`indices` in consecutive chunks of at most `size` (one chunk, the tensor itself, when it fits)."""
    return [indices] if len(indices) <= size else list(torch.split(indices, size))


def critic_name(recipe: Recipe) -> str:
    value = recipe.model.value_model_name
    return f"value model {value} + scalar head" if value else "value head on the policy backbone"


# --------------------------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class Rollout:
    """One batch of sampled completions with everything the PPO updates need."""

    input_ids_bs: torch.Tensor
    attention_mask_bs: torch.Tensor
    mask_bt: torch.Tensor
    logprobs_bt: torch.Tensor
    values_bt: torch.Tensor
    advantages_bt: torch.Tensor
    returns_bt: torch.Tensor
    stats: dict


class PPORun:
    """The models, optimizer and rewards of one PPO run, and the three things a step does: sample, score, update."""

    def __init__(self, recipe: Recipe, prepared: PreparedPPO):
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.recipe, self.t, self.prepared = recipe, recipe.training, prepared
        self.tokenizer = prepared.tokenizer
        start_cpu_processes()
        resume = prepared.resume
        # Models first, from one seed on every process (the value head's init); before the Accelerator exists, so
        # under ZeRO-3 they load whole (no zero.Init) and the reference stays an ordinary module.
        set_seed(self.t.seed)
        model, self.reference = build_models(recipe, resume.path if resume else None)
        deepspeed_plugin = None
        if self.t.deepspeed_config:
            from accelerate.utils import DeepSpeedPlugin

            config = resolve_deepspeed_config(recipe, use_bf16(recipe))
            deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False)
        self.zero3 = deepspeed_plugin is not None and zero_stage(deepspeed_plugin.deepspeed_config) == 3
        # cpu=True for DDP on a CPU machine: without it accelerate does not see a torchrun world of CPU processes
        # (DeepSpeed brings its own CPU accelerator and must not be told cpu).
        self.accelerator = Accelerator(cpu=accelerator() == "cpu" and deepspeed_plugin is None,
                                       mixed_precision=_mixed_precision(recipe),
                                       deepspeed_plugin=deepspeed_plugin)
        set_seed(self.t.seed, device_specific=True)  # each process samples differently; DDP syncs the weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.t.learning_rate, weight_decay=self.t.weight_decay,
                                      fused=self.t.optim == "adamw_torch_fused" or None)
        self.max_steps = self.t.max_steps or math.ceil(
            self.t.num_train_epochs * len(prepared.train_rows) / (rollout_size(recipe) * self.accelerator.num_processes)
        )
        scheduler = get_scheduler(self.t.lr_scheduler_type, optimizer, num_warmup_steps=self.t.warmup_steps,
                                  num_training_steps=self.max_steps)
        # the scheduler stays outside accelerate, which would step it once per process: it counts PPO steps here
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        self.eos_ids = stop_token_ids(self.tokenizer, self.unwrapped.policy)
        if resume is not None:
            if self.deepspeed:  # the engine's own checkpoint: optimizer shards (and trainable weights) per process
                self.model.load_checkpoint(str(resume.path), load_module_strict=False, load_lr_scheduler_states=False)
            else:
                self.optimizer.load_state_dict(torch.load(resume.path / "optimizer.pt", map_location="cpu"))
            self.scheduler.load_state_dict(torch.load(resume.path / "scheduler.pt"))
            _restore_rng(resume.path, self.accelerator.process_index)

    @property
    def unwrapped(self) -> PolicyAndCritic:
        return self.accelerator.unwrap_model(self.model)

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    @contextlib.contextmanager
    def whole_weights(self):
        """Under ZeRO-3, every shard gathered on every process (with DeepSpeed's fetch hooks off) for generation.

        A collective: every process enters it the same number of times. Elsewhere a no-op.
        """
        if not self.zero3:
            yield
            return
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            remove_hooks(self.model)
            try:
                yield
            finally:
                add_hooks(self.model)

    # ---- sampling and scoring

    def generate(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompt_ids_bs, prompt_mask_bs, completion_ids_bt) with prompts left-padded for generation."""
        from transformers import GenerationConfig

        prompts = render_prompts(self.tokenizer, rows, self.recipe.data.max_length)
        batch = self.tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
        ids_bs = batch["input_ids"].to(self.accelerator.device)
        mask_bs = batch["attention_mask"].to(self.accelerator.device)
        # every sampling knob given, so a model's own generation_config (e.g. top_k 20) cannot change what is sampled
        config = GenerationConfig(max_new_tokens=self.t.max_completion_length, do_sample=True,
                                  temperature=self.t.temperature, top_p=self.t.top_p, top_k=0,
                                  eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        policy = self.unwrapped.policy
        policy.eval()
        with torch.no_grad(), self.accelerator.autocast():  # synced_gpus off: weights are whole, nothing to fetch
            out_bs = policy.generate(input_ids=ids_bs, attention_mask=mask_bs, generation_config=config,
                                     synced_gpus=False)
        return ids_bs, mask_bs, out_bs[:, ids_bs.shape[1] :]

    def completion_mask(self, completion_ids_bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask_bt: tokens up to and including the first EOS, has_eos_b)."""
        is_eos_bt = torch.isin(completion_ids_bt, torch.tensor(self.eos_ids, device=completion_ids_bt.device))
        after_eos_bt = (is_eos_bt.long().cumsum(-1) - is_eos_bt.long()) > 0
        return (~after_eos_bt).float(), is_eos_bt.any(-1)

    def score(self, rows, completion_ids_bt, mask_bt, has_eos_b) -> tuple[torch.Tensor, dict]:
        """Sequence scores (the weighted rewards, minus missing_eos_penalty) and each reward's batch mean."""
        from fai_rl.rewards import score_rewards

        completions = [self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                       for ids, mask in zip(completion_ids_bt, mask_bt)]
        prompts = [row["prompt"] for row in rows]  # conversations: reward functions get the last user message
        total, per_fn = score_rewards(self.prepared.reward_fns, prompts, completions, rows)
        score_b = torch.tensor(total, dtype=torch.float32, device=mask_bt.device)
        if self.t.missing_eos_penalty is not None:
            score_b = score_b - self.t.missing_eos_penalty * (~has_eos_b).float()
        parts = {}  # every reward always has a key (NaN where none applied), so processes average the same keys
        for name, scores in per_fn.items():
            given = [s for s in scores if s is not None]
            parts[f"rewards/{name}"] = sum(given) / len(given) if given else math.nan
        return score_b, parts

    def rollout(self, rows: list[dict]) -> Rollout:
        """Sample one completion per prompt, score it, and compute old logprobs, values, rewards and advantages."""
        t = self.t
        with self.whole_weights():
            prompt_ids_bs, prompt_mask_bs, completion_ids_bt = self.generate(rows)
        mask_bt, has_eos_b = self.completion_mask(completion_ids_bt)
        input_ids_bs = torch.cat([prompt_ids_bs, completion_ids_bt], dim=1)
        attention_mask_bs = torch.cat([prompt_mask_bs, mask_bt.long()], dim=1)
        n = completion_ids_bt.shape[1]
        self.model.eval()
        parts = []  # (logprobs, entropy, values, ref_logprobs) per micro-batch: one batch of logits in memory at a time
        for i in micro_batches(torch.arange(len(input_ids_bs)), t.per_device_train_batch_size):
            ids_bs, attn_bs, completion_bt = (
                (input_ids_bs, attention_mask_bs, completion_ids_bt) if len(i) == len(input_ids_bs)
                else (input_ids_bs[i], attention_mask_bs[i], completion_ids_bt[i]))
            with torch.no_grad(), self.accelerator.autocast():
                logits_btv, values_part_bt = self.model(ids_bs, attn_bs, n)
                parts.append((token_logprobs(logits_btv, completion_bt, t.temperature),
                              entropy(logits_btv / t.temperature), values_part_bt))
                del logits_btv
                parts[-1] += (token_logprobs(self.reference_logits(ids_bs, attn_bs, n), completion_bt, t.temperature),)
        logprobs_bt, entropy_bt, values_bt, ref_logprobs_bt = (
            torch.cat(chunks) if len(chunks) > 1 else chunks[0] for chunks in zip(*parts, strict=True))
        score_b, parts = self.score(rows, completion_ids_bt, mask_bt, has_eos_b)
        rewards_bt = per_token_rewards(score_b, logprobs_bt, ref_logprobs_bt, mask_bt, t.kl_coef)
        advantages_bt, returns_bt = compute_gae(rewards_bt, values_bt, mask_bt, t.gamma, t.lam)
        if t.whiten_advantages:
            advantages_bt = masked_whiten(advantages_bt, mask_bt)
        kl_b = ((logprobs_bt - ref_logprobs_bt) * mask_bt).sum(-1)
        stats = {
            "reward": score_b.mean().item(),
            **parts,
            "kl": kl_b.mean().item(),
            "entropy": masked_mean(entropy_bt, mask_bt).item(),
            "completion_length": mask_bt.sum(-1).mean().item(),
            "eos_fraction": has_eos_b.float().mean().item(),
            "value_mean": masked_mean(values_bt, mask_bt).item(),
            "explained_variance": explained_variance(values_bt, returns_bt, mask_bt).item(),
        }
        return Rollout(input_ids_bs, attention_mask_bs, mask_bt, logprobs_bt, values_bt, advantages_bt, returns_bt,
                       stats)

    def reference_logits(self, input_ids_bs, attention_mask_bs, n: int) -> torch.Tensor:
        kwargs = {"input_ids": input_ids_bs, "attention_mask": attention_mask_bs, "use_cache": False,
                  "position_ids": position_ids(attention_mask_bs), "logits_to_keep": n + 1}
        if self.reference is not None:
            return self.reference(**kwargs).logits[:, :-1]
        with self.unwrapped.policy.disable_adapter():  # LoRA: the base model is the reference
            return self.unwrapped.policy(**kwargs).logits[:, :-1]

    # ---- the update

    def update(self, r: Rollout) -> dict:
        """num_ppo_epochs passes over the rollout in num_mini_batches shuffled mini-batches, one optimizer step each;
        a mini-batch larger than per_device_train_batch_size accumulates its gradient over micro-batches of that
        size, each weighted by its share of the mini-batch."""
        t = self.t
        n = r.mask_bt.shape[1]
        size = len(r.mask_bt) // t.num_mini_batches
        totals: dict[str, float] = {}
        self.model.train()
        for _ in range(t.num_ppo_epochs):
            order = torch.randperm(len(r.mask_bt), device=r.mask_bt.device)
            for k in range(t.num_mini_batches):
                micros = micro_batches(order[k * size : (k + 1) * size], t.per_device_train_batch_size)
                for j, i in enumerate(micros):
                    share = len(i) / size  # 1.0 (and the loss untouched) when the mini-batch is one micro-batch
                    with self.accumulating(last=j == len(micros) - 1):
                        with self.accelerator.autocast():
                            logits_btv, values_bt = self.model(r.input_ids_bs[i], r.attention_mask_bs[i], n)
                        new_logprobs_bt = token_logprobs(logits_btv, r.input_ids_bs[i, -n:], t.temperature)
                        pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs_bt, r.logprobs_bt[i],
                                                                   r.advantages_bt[i], r.mask_bt[i], t.cliprange)
                        vf_loss, vf_clipfrac = value_loss(values_bt, r.values_bt[i], r.returns_bt[i], r.mask_bt[i],
                                                          t.cliprange_value)
                        loss = pg_loss + t.vf_coef * vf_loss
                        self.accelerator.backward(loss if len(micros) == 1 else loss * share)
                    for key, value in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clipfrac", clipfrac),
                                       ("value_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):
                        totals[key] = totals.get(key, 0.0) + value.item() * share
                if t.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        self.scheduler.step()
        return {k: v / (t.num_ppo_epochs * t.num_mini_batches) for k, v in totals.items()}

    @contextlib.contextmanager
    def accumulating(self, last: bool):
        """Around one micro-batch's backward: gradients kept local (no DDP all-reduce, no DeepSpeed step) unless it
        is the mini-batch's last. What accelerator.accumulate does, for a micro-batch count that varies."""
        if last:
            yield
            return
        self.accelerator.gradient_state._set_sync_gradients(False)
        try:
            with self.accelerator.no_sync(self.model):
                yield
        finally:
            self.accelerator.gradient_state._set_sync_gradients(True)

    # ---- evaluation and checkpoints

    def evaluate(self, rows: list[dict]) -> dict:
        """eval_reward: mean score of completions sampled as in training (num_generations_eval per held-out prompt).

        Sampled, not greedy, so it measures what PPO optimises and matches GRPO's eval_reward.
        """
        per_prompt = self.t.num_generations_eval or 1
        mine = [row for row in rows[self.accelerator.process_index :: self.accelerator.num_processes]
                for _ in range(per_prompt)]
        total = torch.zeros(2, device=self.accelerator.device)
        size = self.t.per_device_eval_batch_size
        with self.whole_weights():  # once around the loop: processes may hold different numbers of chunks
            for start in range(0, len(mine), size):
                chunk = mine[start : start + size]
                _, _, completion_ids_bt = self.generate(chunk)
                mask_bt, has_eos_b = self.completion_mask(completion_ids_bt)
                score_b, _ = self.score(chunk, completion_ids_bt, mask_bt, has_eos_b)
                total += torch.stack([score_b.sum(), torch.tensor(float(len(chunk)), device=total.device)])
        total = self.accelerator.reduce(total, reduction="sum")
        return {"eval_reward": (total[0] / total[1].clamp(min=1)).item()}

    def save_checkpoint(self, step: int) -> Path:
        """checkpoint-N: policy (model or adapter), critic, optimizer, scheduler, RNG, trainer_state.json; staged."""
        acc, out = self.accelerator, Path(self.t.output_dir)
        staging, final = out / f".checkpoint-{step}.partial", out / f"checkpoint-{step}"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        self.save_weights(staging)
        if self.deepspeed:  # every process writes its optimizer shards (+ `latest`)
            self.model.save_checkpoint(str(staging), tag=f"global_step{step}", exclude_frozen_parameters=True)
        if acc.is_main_process:
            self.tokenizer.save_pretrained(staging)
            if not self.deepspeed:
                torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
        acc.wait_for_everyone()
        _save_rng(staging, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": step, "max_steps": self.max_steps, "algorithm": "ppo",
                     "critic": critic_name(self.recipe)}
            (staging / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            limit = self.t.save_total_limit
            for old in checkpoints(out)[: -limit] if limit else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final


    def save_weights(self, path: Path, policy_only: bool = False) -> None:
        """Policy (HF model or adapter) into path; also value_model/ and value_head.pt unless policy_only.

        Every process calls it: under ZeRO-3 the full weights are gathered (onto the main process, which writes).
        """
        model = self.unwrapped
        state = self.accelerator.get_state_dict(self.model) if self.zero3 else None
        if not self.accelerator.is_main_process:
            return

        def part(prefix: str) -> dict | None:
            return None if state is None else {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        model.policy.save_pretrained(path, state_dict=part("policy."))
        if policy_only:
            return
        if model.value_backbone is not None:
            model.value_backbone.save_pretrained(path / "value_model", state_dict=part("value_backbone."))
        torch.save(part("value_head.") or model.value_head.state_dict(), path / "value_head.pt")


class _FinalSaver:
    """What common.save_final asks of a trainer, so final/ is written exactly as for SFT (staged, fai_rl.json)."""

    def __init__(self, run: PPORun, step: int):
        self.accelerator, self.state, self._run = run.accelerator, SimpleNamespace(global_step=step), run

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def save_model(self, path: str) -> None:
        self._run.save_weights(Path(path), policy_only=True)


def train(recipe: Recipe, prepared: PreparedPPO, run: RunDir) -> dict | None:
    """Sample, score and update for max_steps steps, evaluating and checkpointing on the way; final/ and summary."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t = recipe.training
    ppo = PPORun(recipe, prepared)
    acc, main = ppo.accelerator, ppo.accelerator.is_main_process
    uploads = Uploads(recipe, main=main)  # s3: checkpoint-N in the background, final/ at the end
    start = prepared.resume.step + 1 if prepared.resume else 1
    if main:
        print(f"PPO on this backend: {critic_name(recipe)}; reference: "
              f"{'the policy with its LoRA adapter off' if recipe.model.use_lora else 'a frozen copy of the model'}; "
              f"steps {start}..{ppo.max_steps}", flush=True)

    def log(step: int, metrics: dict) -> None:
        if main:
            run.log_metrics(step, metrics)
            shown = ("reward", "eval_reward", "kl", "policy_loss", "value_loss", "completion_length")
            body = "  ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
            print(f"step {step}/{ppo.max_steps}  {body}", flush=True)

    has_eval = bool(prepared.eval_rows)
    if has_eval and prepared.resume is None:
        log(0, ppo.evaluate(prepared.eval_rows))
    began, tokens, window = time.time(), 0, []
    for step in range(start, ppo.max_steps + 1):
        rows = step_rows(prepared.train_rows, step, rollout_size(recipe), t.seed, acc.process_index, acc.num_processes)
        rollout = ppo.rollout(rows)
        lr = ppo.scheduler.get_last_lr()[0]
        window.append({**rollout.stats, **ppo.update(rollout), "learning_rate": lr})
        tokens += int(rollout.attention_mask_bs.sum())
        if step % t.logging_steps == 0 or step == 1 or step == ppo.max_steps:
            means = torch.tensor([[w[k] for k in window[0]] for w in window], device=acc.device).nanmean(0)
            means = acc.reduce(means, reduction="mean")  # over processes: each sampled its own prompts
            log(step, {k: v for k, v in zip(window[0], means.tolist()) if math.isfinite(v)})
            window = []
        if has_eval and t.eval_steps and step % t.eval_steps == 0 and step != ppo.max_steps:
            log(step, ppo.evaluate(prepared.eval_rows))
        if step % t.save_steps == 0:
            uploads.checkpoint(ppo.save_checkpoint(step))
    runtime = time.time() - began
    if has_eval:
        log(ppo.max_steps, ppo.evaluate(prepared.eval_rows))
    final = save_final(_FinalSaver(ppo, ppo.max_steps), prepared.tokenizer, recipe, run)
    tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum"))
    if not main:
        return None
    uploads.final(final)
    return run.write_summary(
        algorithm=t.algorithm,
        backend=t.backend,
        global_step=ppo.max_steps,
        resumed_from_step=prepared.resume.step if prepared.resume else None,
        critic=critic_name(recipe),
        train_runtime_s=round(runtime, 2),
        train_tokens=tokens,
        tokens_per_s=round(tokens / runtime, 1) if runtime else None,
        peak_gpu_memory_gib=peak_gpu_memory_gib(),
        processes=acc.num_processes,
        final_dir=str(final),
        **uploads.summary(),
    )


def _mixed_precision(recipe: Recipe) -> str:
    """accelerate's mixed_precision for training.bf16 (null: auto) / training.fp16."""
    return "bf16" if use_bf16(recipe) else "fp16" if recipe.training.fp16 else "no"


def step_rows(rows: list[dict], step: int, batch: int, seed: int, rank: int, world: int) -> list[dict]:
    """This process's prompts for PPO step `step` (from 1): consecutive slices of a fresh seeded shuffle per epoch,
    so the data position after a resume follows from the step alone."""
    first = ((step - 1) * world + rank) * batch
    positions = [divmod(i, len(rows)) for i in range(first, first + batch)]
    return [rows[_epoch_order(len(rows), seed + epoch)[pos]] for epoch, pos in positions]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _save_rng(path: Path, rank: int) -> None:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path / ("rng_state.pth" if rank == 0 else f"rng_state_{rank}.pth"))


def _restore_rng(path: Path, rank: int) -> None:
    import numpy as np

    file = path / ("rng_state.pth" if rank == 0 else f"rng_state_{rank}.pth")
    if not file.exists():
        return  # resumed with more processes than saved it: those continue from the seed
    state = torch.load(file, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
