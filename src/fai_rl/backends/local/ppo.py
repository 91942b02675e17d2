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

import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from fai_rl.artifacts import RunDir
from fai_rl.backends.local.common import (
    all_ranks_agree,
    check_precision,
    find_resume_point,
    peak_gpu_memory_gib,
    save_final,
)

# The driver is split in three: the maths in fai_rl.rl_math, the models in ppo_models, one run's state and what a step
# does with it in ppo_run; this module keeps the entry points (prepare, describe, train) and the step loop. Names this
# module does not use itself are still imported: callers and tests reach them as fai_rl.backends.local.ppo.<name>.
from fai_rl.backends.local.ppo_models import PolicyAndCritic, critic_name  # noqa: F401
from fai_rl.backends.local.ppo_run import PPORun, PreparedPPO, Rollout, rollout_size  # noqa: F401
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import render_prompts
from fai_rl.data.truncation import Truncations
from fai_rl.models.load import load_tokenizer
from fai_rl.rl_math import (  # noqa: F401
    compute_gae,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    value_loss,
)
from fai_rl.progress import RunStopped, stop_requested
from fai_rl.s3 import Uploads
from fai_rl.schedule import Schedule

# --------------------------------------------------------------------------------------------------------------------
# prepare / describe: data, rewards and resume point checked before anything is written.


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


# --------------------------------------------------------------------------------------------------------------------
# The loop: a PPORun stepped max_steps times, with logging, evaluation and checkpoints on the way.


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
            run.log_metrics(step, metrics, total=ppo.max_steps)  # and the progress line (fai_rl.progress)

    # prompts are cut to data.max_length (from the left) each time they are sampled: counted over the data, said once
    cuts = Truncations("prompt", recipe.data.max_length)
    render_prompts(ppo.tokenizer, prepared.train_rows + prepared.eval_rows, cuts=cuts)
    if main:
        cuts.report("PPO prompts (train and eval; cut each time they are sampled)")
    if cuts.rows and prepared.resume is None:
        log(0, cuts.metrics())
    has_eval = bool(prepared.eval_rows)
    if has_eval and prepared.resume is None:
        log(0, ppo.evaluate(prepared.eval_rows))
    began, tokens, window = time.time(), 0, []
    for step in range(start, ppo.max_steps + 1):
        rows = step_rows(prepared.train_rows, ppo.schedule, step, acc.process_index)
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
        if main:
            run.progress.tick(step, ppo.max_steps)
        if step != ppo.max_steps and all_ranks_agree(stop_requested(run.path)):  # fai-rl-runs stop, SIGTERM
            saved = ppo.save_checkpoint(step) if step % t.save_steps else run.path / f"checkpoint-{step}"
            raise RunStopped(step, str(saved))
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


def step_rows(rows: list[dict], schedule: Schedule, step: int, rank: int) -> list[dict]:
    """This process's prompts for PPO step `step` (from 1): its slice of the step's rows in the shared schedule
    (consecutive slices of a fresh seeded shuffle per epoch), so the data position after a resume follows from the
    step alone."""
    picked = schedule.rows(step - 1)
    size = len(picked) // schedule.processes
    return [rows[i] for i in picked[rank * size : (rank + 1) * size]]
