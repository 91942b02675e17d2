"""The pipeline recipe: training stages run one after another, each starting from the one before (SFT -> RL -> export).

    preset: tiny                      # tiny | quick | full | null: batch, steps, eval and save cadence together
    output_root: runs/pipeline        # stage NAME writes output_root/NAME; pipeline_state.json says where it is
    stages:
      - {name: sft, recipe: ../quickstart/sft.yaml}
      - {name: grpo, recipe: ../quickstart/grpo.yaml, overrides: {training: {learning_rate: 1.0e-4}}}
      - {name: export, kind: export}

A training stage after another gets `model.init_from` (the previous stage's output_dir: weights only, a fresh
optimizer) and the previous stage's `model.base_model_name`; every stage gets `training.output_dir`. Those keys are the
pipeline's to set (derived), so a stage may not override them. Precedence, lowest first: the stage's recipe file,
the preset, the pipeline's `overrides`, the stage's `overrides`, the command line's `NAME.key=value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from fai_rl.config.schema_fields import _f

STAGE_KINDS = ("train", "export")
EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")  # fai_rl.export.merge.DTYPES (a test checks they agree)

# What each preset sets in every training stage (the tinker-cookbook / Tinker pipeline habit: one key picks the
# scale of a run). Explicit overrides (the pipeline's, the stage's, the command line's) win over the preset; the
# stage recipe's own values lose to it. docs/pipelines.md lists these (tests/test_pipeline.py checks it agrees).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # a smoke test: every stage runs, logs, evaluates, saves and resumes in seconds on a CPU
        "training.max_steps": 4,
        "training.per_device_train_batch_size": 8,
        "training.logging_steps": 1,
        "training.eval_steps": 4,
        "training.save_steps": 2,
    },
    "quick": {  # minutes: enough steps to see the curves move
        "training.max_steps": 50,
        "training.per_device_train_batch_size": 16,
        "training.logging_steps": 5,
        "training.eval_steps": 25,
        "training.save_steps": 25,
    },
    "full": {  # the real run: epochs decide the length (max_steps null)
        "training.max_steps": None,
        "training.per_device_train_batch_size": 32,
        "training.logging_steps": 10,
        "training.eval_steps": 200,
        "training.save_steps": 200,
    },
}
DERIVED_KEYS = ("training.output_dir", "model.init_from", "model.base_model_name")


@dataclass
class StageConfig:
    """One stage of a pipeline."""

    name: str = _f(help="The stage's name: its output dir under output_root, and NAME.key=value on the command line "
                   "(letters, digits, - and _).")
    kind: str = _f("train", help="train: run a training recipe; export: merge the previous stage's final model into a "
                   "plain Hugging Face model dir (fai-rl-export).", choices=STAGE_KINDS)
    recipe: Optional[str] = _f(None, help="train: the training recipe (path relative to the pipeline file).")
    overrides: dict[str, Any] = _f({}, help="train: keys of the stage recipe to set, nested (training: {lr: ..}) or "
                                   "dotted (training.lr: ..); they win over the preset.")
    dtype: str = _f("auto", help="export: the dtype to merge and save in.", choices=EXPORT_DTYPES)


@dataclass
class PipelineRecipe:
    """A pipeline recipe (`fai-rl-train --recipe PIPELINE.yaml`): stages run in order, each from the one before."""

    preset: Optional[str] = _f(None, help="tiny | quick | full: sets batch size, steps, eval and save cadence of every "
                               "training stage together (docs/pipelines.md); null: the stage recipes' own values.",
                               choices=(*PRESETS, None))
    output_root: str = _f(help="Dir holding one output dir per stage (output_root/NAME) and pipeline_state.json.")
    overrides: dict[str, Any] = _f({}, help="Keys set in every training stage (e.g. training: {backend: tinker}); "
                                   "a stage's own overrides win over them.")
    stages: list[StageConfig] = field(default_factory=list, metadata={"help": "The stages, run in order."})
