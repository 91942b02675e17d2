"""Rules of the algorithms and backends: DPO, rewards, sampling (GRPO family, PPO), Tinker and workflows.

Part of the recipe rules (config/rules.py runs them); same contract: (dotted key, "value; why; fix"), no torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from fai_rl.algorithms import algorithm_names, spec_of
from fai_rl.config.schema import DPO_LOSSES, JUDGE_PLACEHOLDERS, Recipe

Problem = tuple[str, str]

def dpo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if spec_of(t.algorithm).family != "preference":
        return
    for i, loss in enumerate(t.dpo_loss_type):
        if loss not in DPO_LOSSES:
            near = difflib.get_close_matches(loss, DPO_LOSSES, n=1)
            hint = f"did you mean '{near[0]}'?" if near else "use one of " + ", ".join(DPO_LOSSES) + "."
            yield f"training.dpo_loss_type[{i}]", f"'{loss}' is not a DPO loss; {hint}"
    if not t.dpo_loss_type:
        yield "training.dpo_loss_type", "is empty; use [sigmoid] (the DPO paper's loss)."
    if t.dpo_loss_weights is not None and len(t.dpo_loss_weights) != len(t.dpo_loss_type):
        yield "training.dpo_loss_weights", (
            f"has {len(t.dpo_loss_weights)} weights for {len(t.dpo_loss_type)} losses in training.dpo_loss_type; "
            "give one weight per loss."
        )
    if not 0 <= t.label_smoothing < 0.5:
        yield "training.label_smoothing", f"{t.label_smoothing} must be in [0, 0.5)."
    if t.beta is not None and t.beta <= 0:
        yield "training.beta", f"{t.beta} must be greater than 0 for DPO (it scales the implicit reward), e.g. 0.1."


def sft_reward_rules(r: Recipe) -> Iterator[Problem]:
    """rewards: learned from by the RL algorithms; in SFT, eval metrics on held-out replies (none without eval data:
    the run says so at start); DPO reads none."""
    if not r.rewards:
        return
    t = r.training
    if spec_of(t.algorithm).family == "preference":
        yield "rewards", "DPO learns from preference pairs and reads no rewards; remove the rewards section."


def _sampling_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if t.temperature <= 0:
        yield "training.temperature", f"{t.temperature} must be greater than 0 (sampling needs it), e.g. 1.0."
    if not 0 < t.top_p <= 1:
        yield "training.top_p", f"{t.top_p} must be in (0, 1]."
    if t.max_completion_length <= 0:
        yield "training.max_completion_length", f"{t.max_completion_length} must be greater than 0, e.g. 256."
    alone = spec_of(t.algorithm).reward_model_alone  # a reward model is reward enough
    if not r.rewards and not (alone and r.model.reward_model_name):
        yield "rewards", (
            f"is empty, but {t.algorithm} learns from rewards; add e.g. rewards[0].function=exact_match"
            + (" or set model.reward_model_name." if alone else ".")
        )


def grpo_rules(r: Recipe, processes: int) -> Iterator[Problem]:
    t = r.training
    if not spec_of(t.algorithm).samples_groups:
        return
    yield from _sampling_rules(r)
    # A generation round samples per_device_train_batch_size x processes x steps completions, in whole groups.
    across = f" x {processes} processes" if processes > 1 else ""
    if t.num_generations < 2:
        yield "training.num_generations", f"{t.num_generations} must be at least 2: advantages compare a group."
    else:
        steps = t.steps_per_generation or t.gradient_accumulation_steps
        batch = t.per_device_train_batch_size * processes * steps
        if batch % t.num_generations:
            per_process = t.per_device_train_batch_size * steps
            gpus = next(k for k in range(1, t.num_generations + 1) if per_process * k % t.num_generations == 0)
            launch = (f", or launch on {gpus} GPUs (--num-gpus {gpus}: a batch of {per_process * gpus})"
                      if processes == 1 and gpus > 1 else "")
            yield "training.num_generations", (
                f"{t.num_generations} does not divide the generation batch of {batch} completions "
                f"(per_device_train_batch_size {t.per_device_train_batch_size}{across} x "
                f"{'steps_per_generation' if t.steps_per_generation else 'gradient_accumulation_steps'} {steps}); "
                f"make the batch a multiple of num_generations{launch}."
            )
    has_eval = bool(r.data.eval_datasets) or r.data.eval_split_ratio > 0
    eval_group = t.num_generations if t.num_generations_eval is None else t.num_generations_eval
    if t.num_generations_eval is not None and t.num_generations_eval < 1:
        yield "training.num_generations_eval", f"{t.num_generations_eval} must be at least 1 (or null: num_generations)."
    elif has_eval and eval_group >= 1 and (t.per_device_eval_batch_size * processes) % eval_group:
        key = "num_generations" if t.num_generations_eval is None else "num_generations_eval"
        yield "training.per_device_eval_batch_size", (
            f"{t.per_device_eval_batch_size}{across} is not a multiple of training.{key} ({eval_group}); "
            "evaluation samples whole groups too: use a multiple of it."
        )
    if t.epsilon is not None and t.epsilon <= 0:
        yield "training.epsilon", f"{t.epsilon} must be greater than 0."
    if t.beta is not None and t.beta < 0:
        yield "training.beta", f"{t.beta} must be 0 (no reference model) or more."
    if t.num_iterations < 1:
        yield "training.num_iterations", f"{t.num_iterations} must be at least 1."
    if spec_of(t.algorithm).sequence_ratios:
        if t.importance_sampling_level == "token":
            yield "training.importance_sampling_level", (
                "'token' turns GSPO into GRPO; use training.algorithm=grpo, or leave it null (sequence)."
            )
        if t.loss_type not in (None, "grpo", "dr_grpo", "bnpo"):
            yield "training.loss_type", (
                f"'{t.loss_type}' does not fit GSPO's sequence-level ratios (it normalises per token or reweights "
                "ratios); use grpo (GSPO's default), dr_grpo or bnpo."
            )


def ppo_rules(r: Recipe) -> Iterator[Problem]:
    t = r.training
    if not spec_of(t.algorithm).rollout_loop:
        return
    yield from _sampling_rules(r)
    for key in ("gamma", "lam"):
        if not 0 <= getattr(t, key) <= 1:
            yield f"training.{key}", f"{getattr(t, key)} must be in [0, 1]."
    for key in ("cliprange", "cliprange_value", "vf_coef"):
        if getattr(t, key) <= 0:
            yield f"training.{key}", f"{getattr(t, key)} must be greater than 0."
    if t.kl_coef < 0:
        yield "training.kl_coef", f"{t.kl_coef} must be 0 or more."
    if t.num_ppo_epochs < 1:
        yield "training.num_ppo_epochs", f"{t.num_ppo_epochs} must be at least 1."
    rollout = t.per_device_train_batch_size * t.gradient_accumulation_steps  # prompts per process per PPO step
    if t.num_mini_batches < 1 or rollout % max(1, t.num_mini_batches):
        yield "training.num_mini_batches", (
            f"{t.num_mini_batches} must be at least 1 and divide the rollout batch of {rollout} prompts "
            f"(per_device_train_batch_size {t.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{t.gradient_accumulation_steps})."
        )
    # Keys the local PPO (written here, not TRL) cannot honour.
    if t.optim not in ("adamw_torch", "adamw_torch_fused"):
        yield "training.optim", f"'{t.optim}' is not offered by PPO, which uses torch AdamW; set training.optim=adamw_torch."


# DPO losses the Tinker backend computes itself (through forward_backward_custom).
TINKER_DPO_LOSSES = ("sigmoid", "hinge", "ipo", "sft")


def tinker_rules(r: Recipe) -> Iterator[Problem]:
    t, k = r.training, r.tinker
    if t.backend != "tinker":
        return
    for key in ("save_every", "checkpoint_ttl_s"):
        value = getattr(k, key)
        if value is not None and value <= 0:
            yield f"tinker.{key}", f"{value} must be greater than 0; or null."
    if k.request_timeout_s <= 0:
        yield "tinker.request_timeout_s", f"{k.request_timeout_s} must be greater than 0 (seconds)."
    if k.max_retries < 0:
        yield "tinker.max_retries", f"{k.max_retries} must be 0 or more."
    if k.resume_from is not None and not k.resume_from.startswith("tinker://"):
        yield "tinker.resume_from", (
            f"'{k.resume_from}' is not a Tinker path; give a tinker://<run>/weights/<name> state path "
            "(output_dir/checkpoints.json lists them)."
        )
    if not (k.train_mlp or k.train_attn or k.train_unembed):
        yield "tinker.train_mlp", "false with train_attn and train_unembed false: LoRA would train nothing."
    if spec_of(t.algorithm).family == "preference":
        for i, loss in enumerate(t.dpo_loss_type):
            if loss in DPO_LOSSES and loss not in TINKER_DPO_LOSSES:
                yield f"training.dpo_loss_type[{i}]", (
                    f"'{loss}' is not offered on the Tinker backend; use one of {', '.join(TINKER_DPO_LOSSES)}, "
                    "or training.backend=local."
                )


def placeholders(template: str) -> list[str] | None:
    """The {names} a str.format template uses; None when it is not a valid template."""
    import string

    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None


def workflow_rules(r: Recipe, processes: int = 1) -> Iterator[Problem]:
    w, t = r.workflow, r.training
    if w.type == "single":
        if w.solver_prompt is not None:
            yield "workflow.solver_prompt", (
                "is set but workflow.type is single, which is plain GRPO reading the prompt column; set "
                "workflow.type=solver_judge (or your module:Class), or remove workflow.solver_prompt."
            )
        return
    if w.kwargs and ":" not in w.type:
        yield "workflow.kwargs", (
            f"{dict(w.kwargs)} but '{w.type}' is a built-in workflow, configured by the workflow keys themselves; "
            "remove workflow.kwargs (it is for module:Class workflows)."
        )
    if t.backend == "local" and (processes > 1 or t.deepspeed_config):
        how = f"{processes} processes" if processes > 1 else f"training.deepspeed_config={t.deepspeed_config}"
        yield "workflow.type", (
            f"'{w.type}' on the local backend runs in one process (its loop is written here, not HF Trainer's), "
            f"but this launch asks for {how}; use one GPU (--num-gpus 1, no deepspeed_config), or the Tinker backend."
        )
    if not spec_of(t.algorithm).workflow_modules:
        able = [n for n in algorithm_names() if spec_of(n).workflow_modules]
        yield "workflow.type", (
            f"'{w.type}' with training.algorithm={t.algorithm}: workflows are trained with "
            f"{' or '.join(n.upper() for n in able)}; set training.algorithm={able[0]} (or {', '.join(able[1:])}), "
            "or workflow.type=single."
        )
    if ":" not in w.type and w.type != "solver_judge":
        near = difflib.get_close_matches(w.type, ["single", "solver_judge"], n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        yield "workflow.type", (
            f"'{w.type}' is not a built-in workflow; {hint}use single, solver_judge, or your own class as "
            "module:Class or path/to/file.py:Class."
        )
    if t.beta:
        yield "training.beta", (
            f"{t.beta} with workflow.type '{w.type}': workflow runs have no KL term to a reference; set "
            "training.beta=0."
        )
    if t.backend == "local" and t.optim not in ("adamw_torch", "adamw_torch_fused"):
        yield "training.optim", (
            f"'{t.optim}' is not offered by the local workflow loop, which uses torch AdamW; set "
            "training.optim=adamw_torch."
        )
    if w.solver_prompt is not None and placeholders(w.solver_prompt) is None:
        yield "workflow.solver_prompt", "is not a valid template (unbalanced { }); write columns as {column}, a "\
            "literal brace as {{ or }}."
    if w.type != "solver_judge":
        return
    if w.num_solutions < 2:
        yield "workflow.num_solutions", f"{w.num_solutions} must be at least 2: the judge picks one of several."
    for key, template, allowed in (("judge_prompt", w.judge_prompt, JUDGE_PLACEHOLDERS),
                                   ("judge_solution_format", w.judge_solution_format, ("index", "solution"))):
        names = placeholders(template)
        if names is None:
            yield f"workflow.{key}", "is not a valid template (unbalanced { }); write a literal brace as {{ or }}."
            continue
        unknown = sorted({n for n in names if n not in allowed})
        if unknown:
            yield f"workflow.{key}", (
                f"uses {', '.join('{' + n + '}' for n in unknown)}; the placeholders are "
                f"{', '.join('{' + n + '}' for n in allowed)} (write a literal brace as {{{{ or }}}})."
            )
        needed = "solutions" if key == "judge_prompt" else "solution"
        if needed not in names:
            yield f"workflow.{key}", f"has no {{{needed}}}: the judge would not see the candidates; add it."
    for key in ("solver_reward", "judge_reward"):
        if getattr(w, key) < 0:
            yield f"workflow.{key}", f"{getattr(w, key)} must be 0 or more (a weight on the role's reward)."


# ----------------------------------------------------------------------------------------------------------------------
# fai-rl-eval recipes
