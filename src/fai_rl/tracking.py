"""Weights & Biases: start the run ourselves so its files live in output_dir and its config is the redacted recipe.

What reaches the run is what reaches metrics.jsonl: RunDir.log_metrics (the one writer of metrics, on every backend
and algorithm) sends each row here too, under the same names and step, so wandb and metrics.jsonl never disagree. HF
Trainer's own WandbCallback is off for that reason (it renames keys to train/... and counts its own steps). Rollout
transcripts add a table (fai_rl.transcripts). With no API key (`wandb.mode: auto`) the run is offline: real run files
under output_dir/wandb/, synced later with `wandb sync`.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from fai_rl.config.load import recipe_to_dict
from fai_rl.config.schema import Recipe


def wandb_mode(recipe: Recipe) -> str:
    """online or offline: auto means online only when an API key is configured."""
    if recipe.wandb.mode != "auto":
        return recipe.wandb.mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return "online"
    server = urlparse(os.environ.get("WANDB_BASE_URL") or recipe.wandb.base_url or "https://api.wandb.ai").hostname
    try:
        if netrc.netrc().authenticators(server or "api.wandb.ai"):  # `wandb login` keys netrc by the server's host
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def start_wandb(recipe: Recipe, output_dir: Path):
    """Start the wandb run of a recipe (None when disabled), on wandb.base_url's server; prints where offline files go."""
    if not recipe.wandb.enabled:
        return None
    import wandb

    if recipe.wandb.base_url and not os.environ.get("WANDB_BASE_URL"):
        # wandb reads its server from the environment (also in HF's WandbCallback and `wandb sync`); one the user
        # exported wins over the recipe's
        os.environ["WANDB_BASE_URL"] = recipe.wandb.base_url
    mode = wandb_mode(recipe)
    run = wandb.init(
        project=recipe.wandb.project,
        entity=recipe.wandb.entity,
        name=recipe.wandb.name,
        tags=list(recipe.wandb.tags) or None,
        dir=str(output_dir),
        mode=mode,
        config=recipe_to_dict(recipe),
    )
    if mode == "offline":
        print(f"wandb: no API key, logging offline to {run.dir}; upload later with `wandb sync {Path(run.dir).parent}`")
    return run


def finish_wandb(run) -> None:
    if run is not None:
        run.finish()


def log_to_wandb(step: int, values: dict) -> None:
    """Send values (numbers, or wandb objects such as a Table) at `step` to the active wandb run; nothing without one.

    wandb is looked up among the loaded modules, not imported: a run without wandb never pays its import.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if run is not None and values:
        run.log(values, step=step)
