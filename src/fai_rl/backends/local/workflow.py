"""GRPO / GSPO over multi-step workflows on the local backend: a small loop of our own (TRL's GRPOTrainer samples one
completion per prompt and cannot express several roles per episode).

GRPO (Shao et al., 2024) over rLLM-style workflows (rllm-org/rllm v0.2, AgentWorkflowTrainer): each step runs the
workflow `num_generations` times on each of its tasks with the current policy (fai_rl.workflows.samplers.LocalSampler:
HF generate), groups the trajectories per task and role (fai_rl.workflows.grouping), and makes `num_iterations`
AdamW updates with the clipped importance-sampled objective against the sampler's log-probs: token-level ratios
normalised over all tokens of the batch (DAPO's token mean; fai_rl.rl_math.token_policy_loss) for grpo, one
length-normalised ratio per sequence for gspo (fai_rl.rl_math.sequence_ratio_loss). LoRA (peft) or all weights.

Departures: no KL term (training.beta is ignored here: rules reject beta > 0 with a workflow); one process (no DDP);
`loss_type` is fixed to the token mean. Sequences whose advantage is 0 are skipped in the update, which changes
nothing (their gradient is 0) but saves the compute. Checkpoints (every save_steps, and on fai-rl-runs stop) hold
what an uninterrupted run would carry on with (fai_rl.backends.local.loop_checkpoint), so --resume continues exactly.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from fai_rl.artifacts import RunDir
from fai_rl.backends.local.common import ResumePoint, find_resume_point, peak_gpu_memory_gib, save_final
from fai_rl.backends.local.loop_checkpoint import load_checkpoint, save_checkpoint
from fai_rl.config.schema import Recipe
from fai_rl.models.load import accelerator, load_causal_lm, load_tokenizer, lora_config
from fai_rl.progress import RunStopped, stop_requested
from fai_rl.rl_math import sequence_ratio_loss, token_policy_loss
from fai_rl.s3 import Uploads
from fai_rl.schedule import Schedule
from fai_rl.workflows import build_workflow, reward_scorer, run_workflow, step_advantages
from fai_rl.workflows.grouping import drop_flat_groups
from fai_rl.workflows.data import describe_workflow, load_workflow_rows
from fai_rl.workflows.loop import evaluate, report_truncations, rollout_metrics
from fai_rl.workflows.samplers import LocalSampler

MICRO_BATCH = 64  # sequences per forward/backward pass of the update


@dataclass
class PreparedWorkflow:
    tokenizer: object
    train: list[dict]
    eval: list[dict]
    rewards: list
    workflow: object
    resume: ResumePoint | None = None


def prepare(recipe: Recipe, resume: str | None) -> PreparedWorkflow:
    """Tokenizer, task rows, reward functions and the workflow object; nothing written."""
    from fai_rl.rewards import recipe_rewards

    resume_point = find_resume_point(recipe, resume)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_workflow_rows(recipe)
    rewards = recipe_rewards(recipe)
    return PreparedWorkflow(tokenizer, train, evaluation, rewards, build_workflow(recipe, reward_scorer(rewards)),
                            resume_point)


def describe(recipe: Recipe, prepared: PreparedWorkflow) -> str:
    return describe_workflow(recipe, prepared.tokenizer, prepared.train, prepared.eval, prepared.rewards)


def build_policy(recipe: Recipe):
    """The policy to train (LoRA-wrapped when asked), dropout off so update log-probs match the sampler's."""
    model = load_causal_lm(recipe.model)
    config = lora_config(recipe.model)
    if config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, config)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.to(accelerator())


def sequence_logprobs(model, steps, temperature: float) -> list[torch.Tensor]:
    """Each step's completion-token log-probs under `model` (right-padded batch, one forward pass)."""
    device = next(model.parameters()).device
    sequences = [s.prompt_tokens + s.completion_tokens for s in steps]
    width = max(len(x) for x in sequences)
    ids = torch.zeros((len(steps), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(sequences):
        ids[i, : len(x)] = torch.tensor(x, device=device)
        mask[i, : len(x)] = 1
    logits_bsv = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float() / temperature
    # position j predicts token j + 1: log p of every next token at once, then each completion's slice
    logprobs_bs = logits_bsv.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits_bsv, dim=-1)
    return [logprobs_bs[i, len(s.prompt_tokens) - 1 : len(x) - 1] for i, (s, x) in enumerate(zip(steps, sequences))]


def update(model, optimizer, scored, recipe: Recipe) -> dict[str, float]:
    """One optimizer step on the scored steps (micro-batched; zero-advantage steps skipped, their gradient is 0)."""
    t = recipe.training
    high = t.epsilon_high
    total_tokens = sum(len(s.step.completion_tokens) for s in scored)
    live = [s for s in scored if s.advantage != 0 and s.step.completion_tokens]
    live.sort(key=lambda s: len(s.step.prompt_tokens) + len(s.step.completion_tokens))  # little padding
    model.train()
    loss_sum, clipped = 0.0, 0.0
    for start in range(0, len(live), MICRO_BATCH):
        chunk = live[start : start + MICRO_BATCH]
        new = sequence_logprobs(model, [s.step for s in chunk], t.temperature)
        old = [torch.tensor(s.step.logprobs, device=n.device) for s, n in zip(chunk, new, strict=True)]
        advantages = [s.advantage for s in chunk]
        if t.importance_sampling_level == "sequence":
            loss, stats = sequence_ratio_loss(new, old, advantages, epsilon=t.epsilon, epsilon_high=high)
            loss = loss * len(chunk) / len(scored)  # the mean over every sequence of the batch
        else:
            loss, stats = token_policy_loss(new, old, advantages, epsilon=t.epsilon, epsilon_high=high,
                                            total_tokens=total_tokens)
        loss.backward()
        loss_sum += loss.item()
        clipped += stats["clip_ratio"] * len(chunk)
    if t.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum, "clip_ratio": clipped / max(1, len(live))}


def train(recipe: Recipe, prepared: PreparedWorkflow, run: RunDir) -> dict:
    from transformers import get_scheduler
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t, w = recipe.training, recipe.workflow
    uploads = Uploads(recipe)  # s3: checkpoint-N in the background, final/ at the end
    torch.manual_seed(t.seed)
    model = build_policy(recipe)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    schedule = Schedule(recipe, len(prepared.train))  # steps and task order: the Tinker workflow loop's too
    total, per_step = schedule.total, schedule.batch
    scheduler = get_scheduler(t.lr_scheduler_type, optimizer, num_warmup_steps=t.warmup_steps,
                              num_training_steps=total)
    sampler = LocalSampler(model, prepared.tokenizer, max_tokens=t.max_completion_length, temperature=t.temperature,
                           top_p=t.top_p)
    print(f"workflow {w.type} with {t.algorithm} on this backend: {per_step} tasks x {t.num_generations} episodes "
          f"per step, grouping {w.grouping}, steps 1..{total}", flush=True)

    def log(step: int, metrics: dict) -> None:
        run.log_metrics(step, metrics, total=total)  # and the progress line (fai_rl.progress)

    began, tokens, window, start = time.time(), 0, [], 0
    if prepared.resume is not None:  # weights, optimizer, schedule, RNG; the rows follow from the step
        saved = load_checkpoint(prepared.resume.path, model, optimizer, scheduler)
        start, window = saved["global_step"], saved["window"]
        print(f"--resume: continuing from {prepared.resume.path.name} (step {start})", flush=True)
    elif prepared.eval:
        log(0, evaluate(prepared.workflow, sampler, prepared.eval, recipe))

    def save(step: int) -> Path:
        path = save_checkpoint(run.path, step, model, optimizer, scheduler, {"window": window}, t.save_total_limit)
        uploads.checkpoint(path)
        return path

    for step in range(start + 1, total + 1):
        tasks = [prepared.train[i] for i in schedule.rows(step - 1)]
        episodes = run_workflow(prepared.workflow, [row for row in tasks for _ in range(t.num_generations)], sampler)
        scored = step_advantages(episodes, [i // t.num_generations for i in range(len(episodes))], w.grouping,
                                 w.norm_adv_by_std)
        metrics = {**rollout_metrics(episodes), "learning_rate": scheduler.get_last_lr()[0]}
        if t.drop_zero_variance_groups:  # DAPO's filter: groups whose rewards are all equal teach nothing
            scored, metrics["groups_dropped"] = drop_flat_groups(scored)
        tokens += sum(len(s.step.prompt_tokens) + len(s.step.completion_tokens) for s in scored)
        for _ in range(t.num_iterations if scored else 0):  # every group flat: no optimizer step
            metrics.update(update(model, optimizer, scored, recipe))
        with warnings.catch_warnings():  # the schedule follows the step count, with or without an update
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        window.append(metrics)
        if step % t.logging_steps == 0 or step == 1 or step == total:
            log(step, {k: sum(m[k] for m in window if k in m) / (1 if k.startswith("truncated_") else  # counts
                                                                 sum(k in m for m in window)) for k in window[-1]})
            window = []
        if prepared.eval and t.eval_steps and step % t.eval_steps == 0 and step != total:
            log(step, evaluate(prepared.workflow, sampler, prepared.eval, recipe))
        saved_now = step % t.save_steps == 0 and step != total
        if saved_now:
            save(step)
        run.progress.tick(step, total)  # the live line
        if step != total and stop_requested(run.path):  # fai-rl-runs stop, SIGTERM, Ctrl-C: a checkpoint, then out
            raise RunStopped(step, str(run.path / f"checkpoint-{step}" if saved_now else save(step)))
    runtime = time.time() - began
    if prepared.eval:
        log(total, evaluate(prepared.workflow, sampler, prepared.eval, recipe))
    report_truncations(prepared.workflow)  # one line when a prompt was cut to data.max_length
    final = save_final(_saver(model, total), prepared.tokenizer, recipe, run)
    uploads.final(final)
    return run.write_summary(
        algorithm=t.algorithm, backend=t.backend, workflow=w.type, global_step=total,
        resumed_from_step=prepared.resume.step if prepared.resume else None,
        train_runtime_s=round(runtime, 2), train_tokens=tokens,
        tokens_per_s=round(tokens / runtime, 1) if runtime else None, peak_gpu_memory_gib=peak_gpu_memory_gib(),
        processes=1, final_dir=str(final), **uploads.summary(),
    )


def _saver(model, step: int):
    """What common.save_final asks of a trainer, for a one-process loop: save_model and the step."""
    one_process = SimpleNamespace(wait_for_everyone=lambda: None)
    return SimpleNamespace(is_world_process_zero=lambda: True, accelerator=one_process,
                           save_model=lambda path: model.save_pretrained(path),
                           state=SimpleNamespace(global_step=step))
