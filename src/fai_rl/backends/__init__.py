"""Dispatch from (training.backend, training.algorithm) to the module that trains it, as the registry names it.

Each module offers the `AlgorithmModule` protocol. Modules are named as strings (AlgorithmSpec.modules) and imported
on use, so validating a recipe never imports torch. Adding an algorithm adds nothing here: its spec names its modules.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from fai_rl.algorithms import spec_of
from fai_rl.artifacts import RunDir
from fai_rl.config.schema import ALGORITHMS, BACKENDS, Recipe

# (backend, algorithm) -> module, built from the registry's specs (fai_rl.algorithms): one module may train several
# algorithms (CPT is SFT on packed text; GSPO is GRPO with sequence-level ratios).
TRAINERS: dict[tuple[str, str], str] = {
    (backend, name): spec_of(name).modules[backend] for backend in BACKENDS for name in ALGORITHMS
    if backend in spec_of(name).modules
}
# workflow.type other than single: TRL's GRPOTrainer cannot express multi-role trajectories, so workflow runs have
# their own small loops (one per backend), chosen here by the same (backend, algorithm) key.
WORKFLOW_TRAINERS: dict[tuple[str, str], str] = {
    (backend, name): spec_of(name).workflow_modules[backend] for backend in BACKENDS for name in ALGORITHMS
    if backend in spec_of(name).workflow_modules
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
