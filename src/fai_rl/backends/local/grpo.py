"""GRPO, GSPO and RLOO on the local backend, through TRL's GRPOTrainer and RLOOTrainer.

GRPO (Shao et al., 2024, DeepSeekMath): sample `num_generations` completions per prompt, score them with the recipe's
reward functions, and use each completion's reward relative to its group as the advantage of a clipped policy-gradient
objective; no value model. GSPO (Zheng et al., 2025, Group Sequence Policy Optimization) is the same loop with the
importance ratio taken per sequence (length-normalised) instead of per token, and much tighter clipping. Here
`training.algorithm: gspo` is this module with the paper's defaults filled in from its registry spec (fai_rl.algorithms, gspo's defaults:
importance_sampling_level sequence, loss_type grpo, beta 0, epsilon 3e-4 / 4e-4), each overridable: one code path.
RLOO (Ahmadian et al., 2024, Back to Basics: REINFORCE-style optimization) samples and updates the same way but takes
as a completion's baseline the mean reward of the other completions of its prompt, unscaled; TRL's RLOOTrainer (same
constructor) runs it, picked by the spec's `advantage`. Departing from the paper's plain REINFORCE, TRL clips the
ratio (epsilon) and subtracts the KL (beta, 0 by default here, 0.05 in TRL) from the reward rather than the loss.

Departures from the papers are TRL's: "dapo" token-level loss normalisation by default for GRPO, and no KL term unless
`training.beta` > 0 (then the reference is the adapter-disabled policy under LoRA, a frozen copy otherwise).

Speed (docs/performance.md): sampling is most of a step. On a GPU, `training.fast_generation` samples with fai-rl's
graph decoder (fai_rl.decode: the whole decode step replayed as one CUDA graph) and, under LoRA, from weights
merged into a side buffer; the sampling distribution and the objective are TRL's, unchanged.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from fai_rl.algorithms import spec_of
from fai_rl.artifacts import RunDir
from fai_rl.backends.local.common import (
    check_precision,
    MetricsCallback,
    ResumePoint,
    find_resume_point,
    quiet_progress_bars,
    resolved_performance,
    run_trainer,
    trainer_arguments,
)
from fai_rl.backends.local.flat_groups import with_flat_groups_dropped
from fai_rl.backends.local.prompt_cut import with_prompts_cut
from fai_rl.backends.local.rollouts import RolloutTranscripts
from fai_rl.config.deepspeed import is_zero3
from fai_rl.config.schema import Recipe
from fai_rl.data.rl import load_prompt_rows, render_prompts
from fai_rl.data.truncation import Truncations
from fai_rl.errors import BackendError
from fai_rl.models.load import load_causal_lm, load_tokenizer, lora_config, quantization_config
from fai_rl.rewards import preview_rewards, recipe_rewards


@dataclass
class PreparedGRPO:
    tokenizer: object
    train: list[dict]
    eval: list[dict]
    rewards: list
    resume: ResumePoint | None


def prepare(recipe: Recipe, resume: str | None) -> PreparedGRPO:
    """Tokenizer, prompt rows, reward functions and the resume point; nothing is written."""
    if recipe.training.use_vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise BackendError("training.use_vllm: true but vllm is not installed; pip install vllm, or set it false.")
    check_precision(recipe)  # fp16 without a GPU: said before anything is loaded or written
    resume_point = find_resume_point(recipe, resume)
    quantization_config(recipe.model)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = load_prompt_rows(recipe)
    return PreparedGRPO(tokenizer, train, evaluation, recipe_rewards(recipe), resume_point)


def describe(recipe: Recipe, prepared: PreparedGRPO) -> str:
    """Prompt counts and lengths, two prompts as the model will see them, and the rewards on a few rows."""
    tok = prepared.tokenizer
    lengths = [len(_render(tok, row["prompt"])) for row in prepared.train]
    cuts = Truncations("prompt", recipe.data.max_length)
    render_prompts(tok, prepared.train, recipe.data.max_length, cuts)
    lines = [
        f"train: {len(prepared.train)} prompts; eval: {len(prepared.eval)} prompts",
        f"prompt tokens: min {min(lengths)} / median {statistics.median(lengths):.0f} / max {max(lengths)}; "
        f"{cuts.rows} longer than data.max_length={recipe.data.max_length} (cut from the left when sampled, counted "
        "per step as truncated_prompts); "
        f"completions up to {recipe.training.max_completion_length} tokens, {recipe.training.num_generations} "
        "per prompt",
        f"objective: {_objective(recipe)}",
    ]
    for n, row in enumerate(prepared.train[:2], start=1):
        text = tok.decode(_render(tok, row["prompt"])).replace("\n", "\\n")
        extra = {k: v for k, v in row.items() if k != "prompt"}
        lines += [f"--- prompt {n} (columns for rewards: {extra})", text]
    lines.append(preview_rewards(prepared.rewards, prepared.train))
    if prepared.resume is not None:
        lines.append(f"resume: from {prepared.resume.path} (step {prepared.resume.step})")
    return "\n".join(lines)


def _render(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


# TRL's (config, trainer) class names for each group advantage estimator (AlgorithmSpec.advantage).
TRAINERS = {"group": ("GRPOConfig", "GRPOTrainer"), "leave_one_out": ("RLOOConfig", "RLOOTrainer")}


def _objective(recipe: Recipe) -> str:
    t = recipe.training
    high = t.epsilon_high
    if spec_of(t.algorithm).advantage == "leave_one_out":
        return (f"{t.algorithm}: leave-one-out advantages (reward minus the mean of the group's other "
                f"{t.num_generations - 1}), token-level ratios clipped to [1-{t.epsilon}, 1+{high}], KL beta {t.beta} "
                "in the reward")
    return (
        f"{t.algorithm}: {t.importance_sampling_level}-level ratios clipped to [1-{t.epsilon}, 1+{high}], "
        f"loss_type {t.loss_type}, advantages scaled by {t.scale_rewards} std, KL beta {t.beta}"
    )


def train(recipe: Recipe, prepared: PreparedGRPO, run: RunDir, callbacks: list | None = None) -> dict | None:
    """Train with GRPOTrainer or RLOOTrainer (evaluating held-out reward before and after); summary on the main
    process."""
    import trl

    from datasets import Dataset

    config_class, trainer_class = (getattr(trl, n) for n in TRAINERS[spec_of(recipe.training.algorithm).advantage])
    # data.max_length cuts prompts from the left, as on Tinker (fai_rl.backends.local.prompt_cut)
    trainer_class = with_prompts_cut(trainer_class, recipe.data.max_length)
    if recipe.training.drop_zero_variance_groups:  # DAPO's filter of flat groups (fai_rl.backends.local.flat_groups)
        trainer_class = with_flat_groups_dropped(trainer_class)

    quiet_progress_bars()
    t = recipe.training
    has_eval = bool(prepared.eval)
    print(f"objective: {_objective(recipe)}", flush=True)
    arguments = dict(
        num_generations=t.num_generations,
        num_generations_eval=t.num_generations_eval,
        max_completion_length=t.max_completion_length,
        temperature=t.temperature,
        top_p=t.top_p,
        beta=t.beta,
        epsilon=t.epsilon,
        epsilon_high=t.epsilon_high,
        loss_type=t.loss_type,
        importance_sampling_level=t.importance_sampling_level,
        scale_rewards=t.scale_rewards,
        num_iterations=t.num_iterations,
        steps_per_generation=t.steps_per_generation,
        mask_truncated_completions=t.mask_truncated_completions,
        use_vllm=t.use_vllm,
        vllm_mode=t.vllm_mode,
        reward_weights=[fn.weight for fn in prepared.rewards],
    )
    # RLOOConfig has no loss_type / importance_sampling_level / scale_rewards: the key-support table
    # (fai_rl.config.support) refuses them in an rloo recipe, so what is dropped here is a default nobody set.
    accepted = {f.name for f in dataclasses.fields(config_class)}
    args = config_class(
        **trainer_arguments(recipe, has_eval, count_input_tokens=False),  # TRL logs num_tokens itself
        **{k: v for k, v in arguments.items() if k in accepted},
    )
    trainer = trainer_class(
        model=load_causal_lm(recipe.model),
        reward_funcs=prepared.rewards,
        args=args,
        train_dataset=Dataset.from_list(prepared.train),
        eval_dataset=Dataset.from_list(prepared.eval) if has_eval else None,
        processing_class=prepared.tokenizer,
        peft_config=lora_config(recipe.model),
        callbacks=[MetricsCallback(run), *(callbacks or [])],  # extra: e.g. scripts/bench.py's step timer
    )
    trainer.add_callback(RolloutTranscripts(recipe, run, trainer))  # rollouts/step-N.jsonl + .html, wandb table
    if resolved_performance(recipe)["fast_generation"]:
        enable_fast_generation(trainer, recipe)
    summary = run_trainer(trainer, recipe, prepared.tokenizer, prepared.resume, run, has_eval)
    if trainer.is_world_process_zero():  # the Tinker driver's line: counts gathered from every process
        trainer.prompts_cut.report("train prompts sampled")
    return summary


def enable_fast_generation(trainer, recipe: Recipe) -> None:
    """Sample through fai-rl's graph decoder (fai_rl.decode): the whole decode step one CUDA graph.

    HF generate with TRL's defaults is bound by per-token Python and kernel-launch overhead, not by the GPU (~40 ms
    per token for a 0.6B model whatever the batch; ~5.7 ms with a static cache and torch.compile). The decoder draws
    from the same distribution (temperature, top-k, top-p as transformers' warpers) and falls back to HF generate for
    anything else TRL may ask. Under LoRA (bf16, no DeepSpeed) it samples from weights merged into a side buffer.
    Graphs need weights that stay at one address: not under ZeRO-3 (gathered per call) or a quantised base, where the
    same step runs eagerly.
    """
    from fai_rl.decode import GraphDecoder, install

    m = recipe.model
    quantised = m.load_in_4bit or m.load_in_8bit
    graphs = False if quantised or is_zero3(recipe) else None  # None: on where CUDA is
    decoder = install(trainer.model, GraphDecoder(trainer.model, graphs=graphs))
    if m.use_lora and not (quantised or recipe.training.deepspeed_config):
        sample_with_merged_lora(trainer.model, decoder)


def sample_with_merged_lora(peft_model, decoder=None) -> None:
    """Make `peft_model.generate` run on W + scale * B @ A, merged into a persistent buffer, with the adapter off.

    Unmerged, every LoRA linear adds two skinny matmuls and an add to each decoded token (~2x the decode time of the
    plain model). Merging in place and unmerging would leave bf16 rounding drift in the frozen weights after every
    step; instead each base weight is pointed at a merged copy for the length of the call and back at its untouched
    storage afterwards. The buffers keep their addresses between calls, so the compiled CUDA graph stays valid.
    Costs one extra copy of the adapted weights' memory. The samples differ from the unmerged model's only by the
    rounding of the merge. With a `decoder` (fai_rl.decode.GraphDecoder) whose fused groups (q/k/v, gate/up; see
    fai_rl.fused_projections) compute a layer, that layer is merged into the group's buffer instead (no second copy).
    """
    import torch
    from peft.tuners.lora import LoraLayer

    grouped = decoder.fused_weights(merge_lora=True) if decoder is not None else None
    skip = grouped.members() if grouped is not None else set()
    layers = [m for m in peft_model.modules()
              if isinstance(m, LoraLayer) and hasattr(m, "get_delta_weight") and id(m) not in skip]
    buffers: dict[int, torch.Tensor] = {}
    generate = peft_model.generate

    def generate_merged(*args, **kwargs):
        originals = []
        try:
            with torch.no_grad():
                for layer in layers:
                    weight = layer.get_base_layer().weight
                    merged = buffers.get(id(layer))
                    if merged is None:
                        merged = buffers[id(layer)] = torch.empty_like(weight)
                    merged.copy_(weight)
                    for name in layer.active_adapters:
                        if name in layer.lora_A:
                            merged.add_(layer.get_delta_weight(name).to(merged.dtype))
                    originals.append((weight, weight.data))
                    weight.data = merged
            with peft_model.disable_adapter():
                return generate(*args, **kwargs)
        finally:
            for weight, data in originals:
                weight.data = data

    peft_model.generate = generate_merged

