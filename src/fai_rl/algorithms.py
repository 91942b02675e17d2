"""The algorithm registry: one AlgorithmSpec per algorithm, the only place that knows what "grpo" means.

A spec holds what used to be spread over the code as name tests (`algorithm in ("grpo", "gspo")`): the defaults it
fills into null training keys, what data it reads, what it can do (sample groups, sequence-level ratios, a critic),
how it is trained (HF Trainer / TRL, or a loop written here) and the module that trains it on each backend. The
schema's choices, the rules, the key-support groups, dispatch, model loading and the docs ask the spec instead.

This module imports nothing of fai_rl and nothing heavy (config/schema_fields.py imports it). Modules are named as strings
and imported on use. Adding an algorithm: one spec here, its module(s), its recipe and its test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

Family = Literal["supervised", "preference", "rl"]
# What one training row is: "rows" prompt/reply or chat rows (SFT), "text" raw documents packed into blocks (CPT),
# "pairs" a prompt with a chosen and a rejected reply (DPO), "prompts" prompts whose completions are sampled (RL).
DataKind = Literal["rows", "text", "pairs", "prompts"]
# How a group-sampling algorithm turns a group's rewards into advantages: "group" reward minus the group mean, divided
# by the std training.scale_rewards names (GRPO); "leave_one_out" reward minus the mean of the group's other rewards
# (RLOO). Each backend maps it onto its trainer / estimator (TRL's GRPOTrainer / RLOOTrainer; fai_rl.rl_math).
Advantage = Literal["group", "leave_one_out"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """What one algorithm is, does and needs; every question the rest of the code asks about an algorithm."""

    name: str  # the value of training.algorithm
    summary: str  # one line for the docs' algorithm table
    title: str  # how a model card says what was done ("DPO (direct preference optimisation)")
    family: Family
    data: DataKind
    # Per-algorithm values of the keys left null in TrainingConfig; load_recipe fills them in, so the resolved recipe
    # says what ran.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    modules: Mapping[str, str] = field(default_factory=dict)  # backend -> module offering backends.AlgorithmModule
    # backend -> module training workflow.type other than single (multi-role trajectories TRL cannot express)
    workflow_modules: Mapping[str, str] = field(default_factory=dict)
    # Samples a group of completions per prompt and compares them (GRPO family): num_generations, group advantages,
    # vLLM, the workflow loops, and FAI-RL's GRPO meanings (data.max_prompt_length, its default rewards).
    samples_groups: bool = False
    advantage: Advantage = "group"  # samples_groups only: the group advantage estimator (see Advantage)
    sequence_ratios: bool = False  # importance ratios per sequence, not per token (GSPO)
    has_critic: bool = False  # a value model (model.value_model_name) beside the policy (PPO)
    # Trained rollout by rollout, num_ppo_epochs over num_mini_batches optimizer steps each (PPO); on the local backend
    # by a loop written here, not HF Trainer / TRL: its own AdamW and schedule, no best-checkpoint tracking.
    rollout_loop: bool = False
    reward_model_alone: bool = False  # model.reward_model_name alone is a reward (no rewards: section needed)
    liger_by_default: bool = False  # training.use_liger_kernel null means on (with a CUDA GPU and liger installed)
    # training.padding_free null means on: a batch's rows laid end to end in one sequence, no compute on padding
    padding_free_by_default: bool = False
    # The metrics that say whether this algorithm is learning, most telling first: they lead curves.png and make the
    # closing before/after table and the run card's results (those the run logged).
    headline_metrics: tuple[str, ...] = ("eval_loss", "loss")
    # Metrics its trainer logs that mean nothing for it: neither drawn nor tabled.
    meaningless_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("defaults", "modules", "workflow_modules"):  # frozen all the way down: a spec is shared
            object.__setattr__(self, f, MappingProxyType(dict(getattr(self, f))))

    @property
    def samples(self) -> bool:
        """Samples completions and learns from rewards (GRPO, GSPO, PPO): sampling keys, rewards, generation."""
        return self.family == "rl"

    @property
    def sequences_per_row(self) -> int:
        """Sequences one row puts through the model in a step (a preference pair: two)."""
        return 2 if self.data == "pairs" else 1


def _modules(local: str, tinker: str) -> dict[str, str]:
    return {"local": f"fai_rl.backends.local.{local}", "tinker": f"fai_rl.backends.tinker.{tinker}"}


# Group-sampling RL: the reward (held-out, then on the training samples), drift from the start, completion length.
_RL_HEADLINE = ("eval_reward", "reward", "kl", "completions/mean_length")
# TRL's GRPO/RLOO eval_loss is the clipped surrogate on freshly sampled eval completions: with on-policy ratios of 1 it
# is minus the mean advantage, noise around 0, not a held-out loss (a "+204%" of it says nothing).
_RL_MEANINGLESS = ("eval_loss",)

# In the order the schema offers them (training.algorithm's choices, the docs).
REGISTRY: dict[str, AlgorithmSpec] = {s.name: s for s in (
    AlgorithmSpec(
        "sft", "supervised fine-tuning on prompt/reply rows or chat messages, loss on the reply",
        "supervised fine-tuning", family="supervised", data="rows", modules=_modules("sft", "sft"),
        liger_by_default=True, padding_free_by_default=True,
        headline_metrics=("eval_loss", "loss", "eval_reward", "eval_mean_token_accuracy", "mean_token_accuracy"),
    ),
    AlgorithmSpec(  # CPT is SFT on packed raw text, loss on every token: the SFT module on each backend
        "cpt", "continued pre-training: next-token loss on raw text packed into data.max_length blocks",
        "continued pre-training (next-token loss on packed raw text)", family="supervised", data="text",
        modules=_modules("sft", "sft"),
        headline_metrics=("eval_loss", "loss", "eval_mean_token_accuracy", "mean_token_accuracy"),
    ),
    AlgorithmSpec(
        "dpo", "direct preference optimisation on chosen/rejected pairs (Rafailov et al., 2023)",
        "DPO (direct preference optimisation)", family="preference", data="pairs", defaults={"beta": 0.1},
        modules=_modules("dpo", "dpo"), liger_by_default=True, padding_free_by_default=True,
        headline_metrics=("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss", "rewards/accuracies",
                          "rewards/margins", "loss"),
    ),
    AlgorithmSpec(
        "ppo", "proximal policy optimisation: clipped ratios over rollouts; on the local backend a value model and GAE "
        "(Schulman et al., 2017)",
        "PPO (proximal policy optimisation)", family="rl", data="prompts", modules=_modules("ppo", "ppo"),
        has_critic=True, rollout_loop=True, reward_model_alone=True,
        headline_metrics=("eval_reward", "reward", "kl", "value_loss"),
    ),
    AlgorithmSpec(
        "grpo", "group relative policy optimisation: rewards of a group of samples per prompt (Shao et al., 2024)",
        "GRPO (group relative policy optimisation)", family="rl", data="prompts",
        defaults={"beta": 0.0, "epsilon": 0.2, "loss_type": "dapo", "importance_sampling_level": "token"},
        modules=_modules("grpo", "grpo"), workflow_modules=_modules("workflow", "workflow"), samples_groups=True,
        headline_metrics=_RL_HEADLINE, meaningless_metrics=_RL_MEANINGLESS,
    ),
    AlgorithmSpec(  # GRPO with sequence-level importance ratios and the paper's settings: the GRPO module
        "gspo", "group sequence policy optimisation: GRPO with sequence-level ratios (Zheng et al., 2025)",
        "GSPO (group sequence policy optimisation)", family="rl", data="prompts",
        defaults={"beta": 0.0, "epsilon": 3e-4, "epsilon_high": 4e-4, "loss_type": "grpo",
                  "importance_sampling_level": "sequence"},
        modules=_modules("grpo", "grpo"), workflow_modules=_modules("workflow", "workflow"), samples_groups=True,
        sequence_ratios=True,
        headline_metrics=_RL_HEADLINE, meaningless_metrics=_RL_MEANINGLESS,
    ),
    AlgorithmSpec(  # GRPO's sampling and clipped update with the leave-one-out baseline: the GRPO modules
        "rloo", "REINFORCE leave-one-out: each sample's reward minus the mean of its group's others (Ahmadian et al., "
        "2024)",
        "RLOO (REINFORCE leave-one-out)", family="rl", data="prompts", defaults={"beta": 0.0, "epsilon": 0.2},
        modules=_modules("grpo", "grpo"), samples_groups=True, advantage="leave_one_out",
        headline_metrics=_RL_HEADLINE, meaningless_metrics=_RL_MEANINGLESS,
    ),
)}

# What spec_of() answers for a name the schema has already refused: no capability, no defaults, no module, so the rules
# that still run after a schema error (to report every problem at once) stay quiet about it.
_UNKNOWN = AlgorithmSpec("", "", "an unknown algorithm", family="supervised", data="rows")
_FLAGS = {f.name for f in fields(AlgorithmSpec)} | {"samples", "sequences_per_row"}


def spec_of(name: str) -> AlgorithmSpec:
    """The spec of training.algorithm `name`; a spec that asks for nothing when the name is not an algorithm."""
    return REGISTRY.get(name, _UNKNOWN)


def algorithm_names(**where: Any) -> tuple[str, ...]:
    """The algorithms, in registry order, whose spec has every given value: algorithm_names(samples_groups=True)."""
    unknown = set(where) - _FLAGS
    if unknown:
        raise TypeError(f"AlgorithmSpec has no {', '.join(sorted(unknown))}")
    return tuple(n for n, s in REGISTRY.items() if all(getattr(s, k) == v for k, v in where.items()))
