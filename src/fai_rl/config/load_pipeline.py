"""Load a pipeline recipe (schema: fai_rl.config.schema_pipeline) with the training recipes' machinery, and derive
each stage's overrides: the preset, the pipeline's and the stage's overrides, then the keys the pipeline sets
(output_dir, and for a stage after another init_from and base_model_name).

A stage's own recipe is not loaded here: the CLI (fai_rl.cli.pipeline) loads every stage with load_recipe and these
overrides before the first stage starts, so a bad stage is refused with its name and the dotted key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fai_rl.config.load import _finish, _load_typed
from fai_rl.config.load_check import _all_field_paths
from fai_rl.config.schema_pipeline import DERIVED_KEYS, PRESETS, PipelineRecipe
from fai_rl.errors import RecipeError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def is_pipeline_recipe(path: str | Path) -> bool:
    """True for a recipe with a top-level `stages:` (a pipeline); a broken file is left to the training loader."""
    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError):  # deep nesting: the loader says so
        return False
    return isinstance(tree, dict) and "stages" in tree


@dataclass
class Stage:
    """One stage, resolved: where it reads, where it writes, and the overrides its recipe is loaded with."""

    index: int
    name: str
    kind: str  # train | export
    recipe: Path | None  # train: the training recipe
    output_dir: Path
    previous: Path | None  # the output_dir of the stage before (init_from, or what export exports)
    overrides: list[str]  # train: key=value, lowest precedence first, derived keys last
    dtype: str = "auto"  # export


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineRecipe, list[Stage]]:
    """The typed pipeline recipe and its resolved stages; raises RecipeError listing every problem at once.

    `overrides` are the command line's: pipeline keys (preset=quick, output_root=...) or NAME.key=value for the stage
    called NAME (a key of its recipe, e.g. grpo.training.learning_rate=1e-4); the latter win over everything but the
    derived keys."""
    path = Path(path)
    names = _stage_names(path)
    own, per_stage = [], {}
    for item in overrides or []:
        head = item.split("=", 1)[0].split(".", 1)
        if len(head) == 2 and head[0] in names:
            per_stage.setdefault(head[0], []).append(item.split(".", 1)[1])
        else:
            own.append(item)
    pipe, ctx = _load_typed(path, own, PipelineRecipe, _all_field_paths(PipelineRecipe))
    pipe = _finish(pipe, ctx, _check_stages(pipe, path))
    stages, previous, base = [], None, None
    for i, s in enumerate(pipe.stages):
        out = Path(pipe.output_root) / s.name
        if s.kind == "export":
            stages.append(Stage(i, s.name, "export", None, out, previous, [], s.dtype))
            continue
        recipe = (path.parent / s.recipe).resolve() if not Path(s.recipe).is_absolute() else Path(s.recipe)
        derived = [f"training.output_dir={json.dumps(str(out))}"]
        if previous is not None:
            derived += [f"model.init_from={json.dumps(str(previous))}", f"model.base_model_name={json.dumps(base)}"]
        stage_overrides = [*_dotlist(PRESETS.get(pipe.preset or "", {})), *_dotlist(_flatten(pipe.overrides)),
                           *_dotlist(_flatten(s.overrides)), *per_stage.get(s.name, []), *derived]
        stages.append(Stage(i, s.name, "train", recipe, out, previous, stage_overrides))
        previous, base = out, _base_model(recipe, stage_overrides)
    return pipe, stages


def _stage_names(path: Path) -> set[str]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        return {str(s["name"]) for s in tree["stages"] if isinstance(s, dict) and "name" in s}
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError):
        return set()  # the typed load reports it


def _check_stages(pipe: PipelineRecipe, path: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not pipe.stages:
        out.append(("stages", "no stages; list at least one, e.g. - {name: sft, recipe: ../quickstart/sft.yaml}."))
    seen: set[str] = set()
    for i, s in enumerate(pipe.stages):
        key = f"stages[{i}]"
        if not _NAME.match(s.name or ""):
            out.append((f"{key}.name", f"'{s.name}' is not a usable name (its output dir): use letters, digits, - "
                        "and _."))
        elif s.name in seen:
            out.append((f"{key}.name", f"'{s.name}' names two stages; give each stage its own name."))
        seen.add(s.name)
        if s.kind == "export":
            if i == 0 or pipe.stages[i - 1].kind != "train":
                out.append((f"{key}.kind", "export comes after a training stage (it exports that stage's final model); "
                            "move it after one."))
            for k in ("recipe", "overrides"):
                if getattr(s, k):
                    out.append((f"{key}.{k}", f"an export stage has no {k}; remove it (only name, kind, dtype)."))
            continue
        if not s.recipe:
            out.append((f"{key}.recipe", "a training stage needs its recipe, e.g. recipe: ../quickstart/sft.yaml "
                        "(relative to this file)."))
        elif not (path.parent / s.recipe).is_file():
            out.append((f"{key}.recipe", f"'{s.recipe}': no such file (looked for {path.parent / s.recipe})."))
        elif is_pipeline_recipe(path.parent / s.recipe):
            out.append((f"{key}.recipe", f"'{s.recipe}' is itself a pipeline; name a training recipe."))
        for k in _flatten(s.overrides):
            if k in DERIVED_KEYS and (k == "training.output_dir" or i > 0):
                out.append((f"{key}.overrides.{k}", "is set by the pipeline (output_root/NAME; a stage after another "
                            "starts from its output with its base model); remove it."))
    for k in _flatten(pipe.overrides):  # one base model for every stage is fine: it is what the stages derive
        if k in DERIVED_KEYS and k != "model.base_model_name":
            out.append((f"overrides.{k}", "is set by the pipeline for each stage (output_root/NAME; a stage after "
                        "another starts from its output); remove it, or set it in the first stage's overrides."))
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{training: {lr: 1}} and {"training.lr": 1} -> {"training.lr": 1}; lists and their items stay values."""
    out: dict[str, Any] = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _dotlist(flat: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in flat.items()]  # JSON is YAML: the override parser types it back


def _base_model(recipe: Path, overrides: list[str]) -> str:
    """model.base_model_name as this stage will run it (the last override that sets it, else its recipe's)."""
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        if key == "model.base_model_name":
            return str(yaml.safe_load(value))
    try:
        return str(yaml.safe_load(recipe.read_text(encoding="utf-8"))["model"]["base_model_name"])
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError):
        return ""  # the stage's own load reports what is wrong


__all__ = ["RecipeError", "Stage", "is_pipeline_recipe", "load_pipeline"]
