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
    """online, offline or disabled: the user's WANDB_MODE offline/disabled wins over the recipe; auto means WANDB_MODE
    when set, else online only when an API key is configured."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = "offline" if env == "dryrun" else env
    if env in ("offline", "disabled") or (recipe.wandb.mode == "auto" and env == "online"):
        return env
    if recipe.wandb.mode != "auto":
        return recipe.wandb.mode
    if os.environ.get("WANDB_API_KEY"):
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
    args = dict(project=recipe.wandb.project, entity=recipe.wandb.entity, name=recipe.wandb.name,
                tags=list(recipe.wandb.tags) or None, dir=str(output_dir), config=recipe_to_dict(recipe))
    if os.environ.get("WANDB_BASE_URL"):  # also given explicitly: wandb reads the environment once per process
        args["settings"] = wandb.Settings(base_url=os.environ["WANDB_BASE_URL"])
    why = (f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_MODE")
           else "wandb.mode: offline" if recipe.wandb.mode == "offline" else "no API key")
    if mode == "online":  # a tracking service that cannot be reached never ends a training run
        server = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
        proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
        why = None if proxied else _unreachable(server)
        if why is None:
            try:
                return wandb.init(mode="online", **args)
            except Exception as e:  # wandb.Error (CommError, AuthenticationError, a timeout) or its service dying
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = f"{server} cannot be reached ({why}), kept training"
        mode = "offline"
    run = wandb.init(mode=mode, **args)
    if mode == "offline":
        print(f"wandb: {why}; logging offline to {run.dir}; upload later with `wandb sync {Path(run.dir).parent}`",
              flush=True)
    return run


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to `url`'s host cannot be made (None when it can): a quick look before wandb.init, whose
    own retries take init_timeout (90 s) to give up on a dead network."""
    import socket

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


def finish_wandb(run) -> None:
    if run is not None:
        try:
            run.finish()
        except Exception as e:  # the run's files are on disk already; an upload that fails does not fail the run
            print(f"wandb: finishing the run failed ({e}); its files stay in {run.dir}", file=sys.stderr)


def log_to_wandb(step: int, values: dict) -> None:
    """Send values (numbers, or wandb objects such as a Table) at `step` to the active wandb run; nothing without one.

    wandb is looked up among the loaded modules, not imported: a run without wandb never pays its import.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if run is not None and values:
        try:
            run.log(values, step=step)
        except Exception as e:  # metrics.jsonl holds the row; wandb losing it never ends the run
            print(f"wandb: step {step} not logged ({e}); metrics.jsonl has it", file=sys.stderr)
