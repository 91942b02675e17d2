"""The fai-rl-eval recipe schema: `evaluation:` and each of its `tasks[]`, with the task types and their metrics.

A second recipe type, loaded by the same machinery as the training recipe (fai_rl.config.load.load_eval_recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fai_rl.config.schema_data import DatasetSpec
from fai_rl.config.schema_fields import _f
from fai_rl.config.schema_rewards import RewardSpec

EVAL_TASK_TYPES = ("generate", "multiple_choice", "workflow")  # fai_rl.evaluation.run.TASK_TYPES runs each
# workflow: the workflow's own metrics (solver and solver+judge pass@k, judge accuracy, reward per role)
EVAL_METRICS = {"generate": ("exact_match", "numeric"), "multiple_choice": ("accuracy",), "workflow": ("workflow",)}


@dataclass
class EvalTaskConfig:
    """One evaluation task: a dataset, how the model answers it, and how answers are scored."""

    name: str = _f(help="Name of the task in the table, results.json and samples.jsonl.")
    dataset: DatasetSpec = _f(
        help="The data: a local file, dataset dir, hub dataset or built-in task (fai-rl/digits) with its split and "
        "columns (prompt_column or messages_column, answer_column), as in data.datasets."
    )
    type: str = _f(
        "generate",
        help="generate: the model writes an answer, scored by `metrics` and `rewards`; multiple_choice: the model "
        "picks one of `choices_column` (by log-likelihood or a generated letter, see multiple_choice_mode); "
        "workflow: the workflow of `workflow_recipe` is run num_samples times per prompt (solver and solver+judge "
        "pass@k, judge accuracy).",
        choices=EVAL_TASK_TYPES,
    )
    metrics: list[str] = _f(
        [],
        help="generate: exact_match (normalised text equals the answer), numeric (final numbers equal, GSM8K-style "
        "extraction as the math_answer reward); multiple_choice: accuracy. Empty: exact_match, resp. accuracy.",
    )
    rewards: list[RewardSpec] = _f(
        [], help="Reward functions (as in a training recipe's rewards:) scored as extra metrics, named reward/<name>."
    )
    num_samples: int = _f(1, help="Completions sampled per prompt (n of pass@k); > 1 needs temperature > 0.")
    pass_k: list[int] = _f(
        [], help="The k of pass@k reported for each metric, each in 1..num_samples (empty: 1 and num_samples)."
    )
    pass_threshold: float = _f(
        1.0, help="A sample counts as correct for pass@k when its metric score is at least this (rewards may be "
        "fractional)."
    )
    temperature: float = _f(0.0, help="Sampling temperature; 0 is greedy decoding.")
    top_p: float = _f(1.0, help="Nucleus sampling mass, in (0, 1].")
    max_new_tokens: int = _f(256, help="Longest generated answer, in tokens.")
    system_prompt: Optional[str] = _f(None, help="System message put first in every prompt that has none.")
    chat_template: bool = _f(
        True, help="Render prompts with the model's chat template (false: the prompt text as plain text)."
    )
    choices_column: str = _f("choices", help="multiple_choice: the column with the list of choice texts.")
    multiple_choice_mode: str = _f(
        "loglikelihood",
        help="multiple_choice: loglikelihood (each choice's text scored as the reply; the most likely is the pick) "
        "or generate (the choices are listed as A., B., ... and the first letter generated is the pick).",
        choices=("loglikelihood", "generate"),
    )
    length_normalize: bool = _f(
        False, help="multiple_choice loglikelihood: compare mean per-token log-probs instead of sums."
    )
    numeric_tolerance: float = _f(1e-6, help="numeric: largest absolute difference counted as equal.")
    workflow_recipe: Optional[str] = _f(
        None, help="workflow: a training recipe whose workflow: and rewards: sections define what runs and how it is "
        "scored (e.g. recipes/quickstart/solver_judge.yaml); this task's dataset supplies the problems."
    )


@dataclass
class EvaluationConfig:
    """Which models to evaluate on which tasks, and where the results go."""

    models: list[str] = _f(
        help="Models to evaluate: run dirs (their final/), final/ or checkpoint-N dirs, LoRA adapter dirs, hub ids, "
        "built-in models (fai-rl/tiny-sft) or tinker:// sampler paths."
    )
    tasks: list[EvalTaskConfig] = _f(help="The tasks every model is evaluated on.")
    baseline: Optional[str] = _f(
        None, help="A model (same forms as models) evaluated too and shown side by side, with each model's difference."
    )
    base_model: Optional[str] = _f(
        None,
        help="Base model of tinker:// paths (its tokenizer renders the prompts), e.g. Qwen/Qwen3-4B-Instruct-2507.",
    )
    output_dir: Optional[str] = _f(
        None, help="Where results.json and samples.jsonl go (null: <run dir of the first model>/eval)."
    )
    batch_size: int = _f(64, help="Sequences (prompts x samples) generated together on a local model.")
    device: Optional[str] = _f(None, help="Local device: cpu, cuda, cuda:1 (null: a GPU when there is one).")
    dtype: str = _f(
        "auto", help="Local weights dtype (auto: bfloat16 on a capable GPU, else float32).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    seed: int = _f(0, help="Sampling seed (the same recipe samples the same completions on the same machine).")
    tinker_base_url: Optional[str] = _f(
        None, help="Tinker service URL for tinker:// models (null: TINKER_BASE_URL, else the SDK default)."
    )
    request_timeout_s: float = _f(600.0, help="Longest wait for one Tinker request.")


@dataclass
class EvalRecipe:
    """An evaluation recipe (fai-rl-eval)."""

    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
