"""The recipe schema: one typed tree, the only place defaults live.

Every field carries a one-line `help` (rendered into docs/recipe-reference.md by `python -m fai_rl.config.docs`) and,
where the value is one of a closed set, its `choices`. Validation (fai_rl.config.load) reads both, so a new field is
documented and checked the moment it is declared here.

The sections live in modules by what they describe (schema_data, schema_training, schema_services, schema_rewards,
and schema_eval for fai-rl-eval's recipes, on the closed sets and field helper of schema_fields); this module puts the
training recipe together and is where the rest of fai_rl imports every name of the schema from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fai_rl.config.schema_data import DataConfig, DatasetSpec, ModelConfig
from fai_rl.config.schema_eval import EVAL_METRICS, EVAL_TASK_TYPES, EvalRecipe, EvalTaskConfig, EvaluationConfig
from fai_rl.config.schema_fields import (
    ALGORITHMS,
    BACKENDS,
    DPO_LOSSES,
    GRPO_LOSSES,
    LR_SCHEDULERS,
    OPTIMIZERS,
    _f,
)
from fai_rl.config.schema_rewards import DEFAULT_JUDGE_PROMPT, JUDGE_PLACEHOLDERS, RewardSpec, WorkflowConfig
from fai_rl.config.schema_services import S3Config, TensorBoardConfig, TinkerConfig, WandbConfig
from fai_rl.config.schema_training import TrainingConfig

__all__ = [
    "ALGORITHMS", "BACKENDS", "DEFAULT_JUDGE_PROMPT", "DPO_LOSSES", "EVAL_METRICS", "EVAL_TASK_TYPES", "GRPO_LOSSES",
    "JUDGE_PLACEHOLDERS", "LR_SCHEDULERS", "OPTIMIZERS",
    "DataConfig", "DatasetSpec", "EvalRecipe", "EvalTaskConfig", "EvaluationConfig", "ModelConfig", "Recipe",
    "RewardSpec", "S3Config", "TensorBoardConfig", "TinkerConfig", "TrainingConfig", "WandbConfig", "WorkflowConfig",
]


@dataclass
class Recipe:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    rewards: list[RewardSpec] = _f(
        [], help="Reward functions for the RL algorithms, summed with their weights; in SFT, metrics of greedy replies "
        "to the held-out prompts at each evaluation (eval_reward)."
    )
    tinker: TinkerConfig = field(default_factory=TinkerConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    s3: S3Config = field(default_factory=S3Config)
