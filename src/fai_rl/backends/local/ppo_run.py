"""One local PPO run's state and what a step does with it: sample and score (rollout), update, evaluate, checkpoint.

fai_rl.backends.local.ppo holds the paper notes, the entry points and the step loop that drives a PPORun; the models
are in ppo_models, the maths in fai_rl.rl_math. Tensor names carry their shapes: b = batch, s = prompt + completion
positions, t = completion positions, v = vocab.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fai_rl.artifacts import checkpoints
from fai_rl.backends.local.common import ResumePoint, start_cpu_processes
from fai_rl.backends.local.ppo_models import (
    PolicyAndCritic,
    build_models,
    critic_name,
    reference_logits,
    save_models,
)
from fai_rl.config.deepspeed import is_zero3, resolve_deepspeed_config
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import Truncations, render_prompts
from fai_rl.decode import GraphDecoder, Knobs
from fai_rl.models.load import accelerator, use_bf16, use_fast_generation
from fai_rl.rl_math import (
    compute_gae,
    entropy,
    explained_variance,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    token_logprobs,
    value_loss,
)
from fai_rl.sampling import stop_token_ids
from fai_rl.schedule import Schedule


@dataclass
class PreparedPPO:
    """What prepare() checked and loaded before anything is written: the run is built from it."""

    tokenizer: object
    train_rows: list[dict]
    eval_rows: list[dict]
    reward_fns: list
    resume: ResumePoint | None


def rollout_size(recipe: Recipe) -> int:
    """Prompts one process samples per PPO step: per_device_train_batch_size x gradient_accumulation_steps."""
    return recipe.training.per_device_train_batch_size * recipe.training.gradient_accumulation_steps


def micro_batches(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`indices` in consecutive chunks of at most `size` (one chunk, the tensor itself, when it fits)."""
    return [indices] if len(indices) <= size else list(torch.split(indices, size))


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
        self.zero3 = is_zero3(recipe)
        # cpu=True for DDP on a CPU machine: without it accelerate does not see a torchrun world of CPU processes
        # (DeepSpeed brings its own CPU accelerator and must not be told cpu).
        self.accelerator = Accelerator(cpu=accelerator() == "cpu" and deepspeed_plugin is None,
                                       mixed_precision=_mixed_precision(recipe),
                                       deepspeed_plugin=deepspeed_plugin)
        set_seed(self.t.seed, device_specific=True)  # each process samples differently; DDP syncs the weights
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.t.learning_rate, weight_decay=self.t.weight_decay,
                                      fused=self.t.optim == "adamw_torch_fused" or None)
        # steps and each step's prompts: the shared schedule (the Tinker backend's PPO asks the same one)
        self.schedule = Schedule(recipe, len(prepared.train_rows), self.accelerator.num_processes)
        self.max_steps = self.schedule.total
        scheduler = get_scheduler(self.t.lr_scheduler_type, optimizer, num_warmup_steps=self.t.warmup_steps,
                                  num_training_steps=self.max_steps)
        # the scheduler stays outside accelerate, which would step it once per process: it counts PPO steps here
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        self.eos_ids = stop_token_ids(self.tokenizer, self.unwrapped.policy)
        # training.fast_generation: the graph decoder; graphs need weights at one address (not ZeRO-3, not 4/8-bit)
        quantised = recipe.model.load_in_4bit or recipe.model.load_in_8bit
        self.decoder = GraphDecoder(self.unwrapped.policy, graphs=False if self.zero3 or quantised else None) \
            if use_fast_generation(recipe) else None
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

        prompts = render_prompts(self.tokenizer, rows, cuts=Truncations("prompt", self.recipe.data.max_length))
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
            if self.decoder is not None:
                completion_bt, _, _ = self.decoder.generate(ids_bs, mask_bs, self.t.max_completion_length,
                                                            Knobs(self.t.temperature, self.t.top_p), self.eos_ids,
                                                            self.tokenizer.pad_token_id)
                return ids_bs, mask_bs, completion_bt
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
                # inline, so the reference's logits are freed before the next micro-batch's forward pass
                parts[-1] += (token_logprobs(reference_logits(self.reference, self.unwrapped, ids_bs, attn_bs, n),
                                             completion_bt, t.temperature),)
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
        per_prompt = self.t.num_generations_eval
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
            state = {"global_step": step, "max_steps": self.max_steps, "algorithm": self.recipe.training.algorithm,
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
        state = self.accelerator.get_state_dict(self.model) if self.zero3 else None
        if self.accelerator.is_main_process:
            save_models(self.unwrapped, path, state, policy_only)


def _mixed_precision(recipe: Recipe) -> str:
    """accelerate's mixed_precision for training.bf16 (null: auto) / training.fp16."""
    return "bf16" if use_bf16(recipe) else "fp16" if recipe.training.fp16 else "no"


def _save_rng(path: Path, rank: int) -> None:
    """This process's Python, numpy and torch RNG states, so a resumed run draws what the uninterrupted one would."""
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
