"""model.init_from on the local backend: which directory's weights a run starts from (SFT -> RL).

A run's output_dir gives its final/, else its latest checkpoint-N; a final/ or checkpoint-N dir (full weights or a
LoRA adapter) is taken as it is. Only paths and small JSON/YAML files are read here, so the recipe rules can refuse a
bad value before anything loads or is written; fai_rl.models.init_from turns the directory into weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

FIX = ("give a local run's output_dir (its final/, else its latest checkpoint-N, is used), or a final/ or "
       "checkpoint-N dir")


def init_from_dir(value: str) -> Path | str:
    """The directory whose weights model.init_from names, or a problem ("value; why; fix") when it names none."""
    if value.startswith("tinker://"):
        return (f"'{value}' is a Tinker state, which the local backend cannot load; set training.backend=tinker, "
                f"or download it (fai-rl-export) and give that dir, or {FIX}.")
    path = Path(value).expanduser()
    if not path.exists():
        return f"'{value}' does not exist; {FIX}."
    if not path.is_dir():
        return f"'{value}' is a file; {FIX}."
    if _holds_weights(path):
        return path
    found = [p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and _holds_weights(p)]
    if _holds_weights(path / "final"):
        return path / "final"
    if found:
        return max(found, key=lambda p: int(p.name.split("-")[-1]))
    return f"'{value}' holds neither final/ nor a checkpoint-N with weights, nor model or adapter files; {FIX}."


def is_adapter(path: Path) -> bool:
    """The dir holds a PEFT adapter (merged into its base when a run starts from it)."""
    return (path / "adapter_config.json").exists()


def trained_base(path: Path) -> str | None:
    """model.base_model_name of the run that wrote `path` (fai_rl.json, else the run's recipe.resolved.yaml)."""
    try:
        note = path / "fai_rl.json"
        if note.exists():
            return json.loads(note.read_text(encoding="utf-8")).get("base_model_name")
        recipe = path.parent / "recipe.resolved.yaml"
        if recipe.exists():
            return ((yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("model") or {}).get(
                "base_model_name")
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return None


def init_from_problem(value: str, base_model_name: str) -> str | None:
    """Why model.init_from cannot start a local run whose model.base_model_name is given, or None."""
    found = init_from_dir(value)
    if isinstance(found, str):
        return found
    base = trained_base(found)
    if base is not None and base != base_model_name:
        what = "a LoRA adapter" if is_adapter(found) else "full weights"
        return (f"'{value}': {found} ({what}) was trained from '{base}', but model.base_model_name is "
                f"'{base_model_name}' (its tokenizer{' and weights' if is_adapter(found) else ''} would be used); "
                f"set model.base_model_name={base}.")
    return None


def _holds_weights(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").exists() or is_adapter(path))
