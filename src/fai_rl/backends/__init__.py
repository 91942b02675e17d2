"""Dispatch from (training.backend, training.algorithm) to the module that trains it: one table, one place.

Each module offers the `AlgorithmModule` protocol. Modules are named as strings and imported on use, so validating a
recipe never imports torch. Adding an algorithm is one line here plus its module, recipe and test.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from fai_rl.artifacts import RunDir
from fai_rl.config.schema import Recipe

TRAINERS: dict[tuple[str, str], str] = {
    ("local", "sft"): "fai_rl.backends.local.sft",
    ("local", "cpt"): "fai_rl.backends.local.sft",  # CPT is SFT on packed raw text, loss on every token: one module
    ("local", "dpo"): "fai_rl.backends.local.dpo",
    ("local", "grpo"): "fai_rl.backends.local.grpo",
    ("local", "gspo"): "fai_rl.backends.local.grpo",  # GSPO is GRPO with sequence-level ratios: one module
    ("local", "ppo"): "fai_rl.backends.local.ppo",
    ("tinker", "sft"): "fai_rl.backends.tinker.sft",
    ("tinker", "cpt"): "fai_rl.backends.tinker.sft",  # one module, as on the local backend
    ("tinker", "dpo"): "fai_rl.backends.tinker.dpo",
    ("tinker", "grpo"): "fai_rl.backends.tinker.grpo",
    ("tinker", "gspo"): "fai_rl.backends.tinker.grpo",  # one module, as on the local backend
    ("tinker", "ppo"): "fai_rl.backends.tinker.ppo",
}
# GRPO/GSPO with workflow.type other than single: TRL's GRPOTrainer cannot express multi-role trajectories, so
# workflow runs have their own small loops (one per backend), chosen here by the same (backend, algorithm) key.
WORKFLOW_TRAINERS: dict[tuple[str, str], str] = {
    ("local", "grpo"): "fai_rl.backends.local.workflow",
    ("local", "gspo"): "fai_rl.backends.local.workflow",
    ("tinker", "grpo"): "fai_rl.backends.tinker.workflow",
    ("tinker", "gspo"): "fai_rl.backends.tinker.workflow",
}


class AlgorithmModule(Protocol):
    """What a backend's algorithm module offers the CLI."""

    def prepare(self, recipe: Recipe, resume: str | None) -> Any:
        """Load the tokenizer and data, check them and the resume point; write nothing."""

    def describe(self, recipe: Recipe, prepared: Any) -> str:
        """What --dry-run prints about the prepared data (rendered examples, token statistics)."""

    def train(self, recipe: Recipe, prepared: Any, run: RunDir) -> dict | None:
        """Train, writing the artefacts into `run`; returns the summary on the main process, None on the others."""


def check_dispatch(recipe: Recipe) -> list[tuple[str, str]]:
    """A recipe problem when no module trains this (backend, algorithm) pair in this version."""
    pair = (recipe.training.backend, recipe.training.algorithm)
    if recipe.workflow.type != "single" and pair in WORKFLOW_TRAINERS:
        from fai_rl.workflows import check_workflow

        return check_workflow(recipe)  # module:Class imports and is a workflow (other workflow keys: config.rules)
    if pair in TRAINERS:
        return []
    offered = ", ".join(f"{a} on {b}" for b, a in TRAINERS)
    return [(
        "training.algorithm",
        f"'{pair[1]}' on backend '{pair[0]}' is not available in this version of fai-rl (available: {offered}); "
        "pick one of those.",
    )]


def algorithm_module(recipe: Recipe) -> AlgorithmModule:
    """The module that trains this recipe (check_dispatch has already accepted it)."""
    pair = (recipe.training.backend, recipe.training.algorithm)
    if recipe.workflow.type != "single" and pair in WORKFLOW_TRAINERS:
        return importlib.import_module(WORKFLOW_TRAINERS[pair])
    return importlib.import_module(TRAINERS[pair])
