"""DeepSpeed configs: the shipped ones, finding the file a recipe names, and filling its "auto" values from the recipe.

`training.deepspeed_config` is a path to a DeepSpeed JSON file, or the name of a shipped one (`zero2`, `zero3.json`,
`recipes/deepspeed/zero3_offload.json`). The shipped files live in the package (fai_rl/config/deepspeed_configs/, so an
installed wheel has them wherever it runs); the repository's recipes/deepspeed/ holds links to them. Values the recipe already decides (micro batch, gradient accumulation,
clipping, bf16) are written "auto" in the shipped files and filled here, so the recipe stays the one place they are
set; a user's file that sets them to other numbers is a recipe error. No torch here: the launcher and the recipe
rules read these files before any model loads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from fai_rl.algorithms import spec_of
from fai_rl.config.schema import Recipe

SHIPPED = ("zero1", "zero2", "zero3", "zero3_offload")
SHIPPED_DIR = Path(__file__).resolve().parent / "deepspeed_configs"


def deepspeed_config_path(value: str) -> Path | None:
    """The file `training.deepspeed_config` names (a path, else a shipped config's name); None when there is none."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = path.name.removesuffix(".json")
    if name in SHIPPED and (len(path.parts) == 1 or path.parent.name == "deepspeed"):
        shipped = SHIPPED_DIR / f"{name}.json"
        return shipped if shipped.is_file() else None
    return None


def load_deepspeed_config(value: str) -> dict:
    """The JSON of the named config; ValueError with the reason when it is missing or not a JSON object."""
    path = deepspeed_config_path(value)
    if path is None:
        raise ValueError(f"'{value}' does not exist; give the path of a DeepSpeed JSON file or one of the shipped "
                         f"configs: {', '.join(SHIPPED)}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"'{path}' is not valid JSON ({e}); fix the file") from None
    if not isinstance(config, dict):
        raise ValueError(f"'{path}' holds a JSON {type(config).__name__}, not an object; a DeepSpeed config is "
                         "a {...}")
    return config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def is_zero3(recipe: Recipe) -> bool:
    """The recipe's DeepSpeed config is ZeRO stage 3 (parameters sharded: gathered for each generation, and for a
    whole-model state dict); False without a DeepSpeed config."""
    t = recipe.training
    return bool(t.deepspeed_config) and zero_stage(load_deepspeed_config(t.deepspeed_config)) == 3


def offloads_params(config: dict) -> bool:
    return config.get("zero_optimization", {}).get("offload_param", {}).get("device", "none") not in ("none", None)


def recipe_values(recipe: Recipe, bf16: bool) -> dict[str, object]:
    """The DeepSpeed keys the recipe decides, as dotted paths. PPO makes one optimizer step per mini-batch."""
    t = recipe.training
    mini_batches = spec_of(t.algorithm).rollout_loop
    return {
        "train_micro_batch_size_per_gpu": t.per_device_train_batch_size // t.num_mini_batches if mini_batches
        else t.per_device_train_batch_size,
        "gradient_accumulation_steps": 1 if mini_batches else t.gradient_accumulation_steps,
        "gradient_clipping": t.max_grad_norm,
        "bf16.enabled": bf16,
        "fp16.enabled": bool(t.fp16),
    }


def resolve_deepspeed_config(recipe: Recipe, bf16: bool) -> dict:
    """The recipe's DeepSpeed config with every recipe-decided "auto" filled in (the rest left to the trainers).

    `train_batch_size` "auto" is dropped: DeepSpeed derives it from the micro batch, accumulation and world size.
    """
    config = copy.deepcopy(load_deepspeed_config(recipe.training.deepspeed_config))
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]
    for dotted, value in recipe_values(recipe, bf16).items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node.get(key), dict) else None
            if node is None:
                break
        if node is not None and node.get(leaf) == "auto":
            node[leaf] = value
    return config


def recipe_conflicts(recipe: Recipe, config: dict) -> list[tuple[str, str]]:
    """Numbers a user's config sets that disagree with the recipe (the trainers would stop on them after loading)."""
    t = recipe.training
    problems = []
    for dotted, value in recipe_values(recipe, bf16=bool(t.bf16)).items():
        if dotted in ("bf16.enabled", "fp16.enabled"):
            continue
        given = config.get(dotted)
        if given not in (None, "auto") and given != value:
            source = {"train_micro_batch_size_per_gpu": "training.per_device_train_batch_size",
                      "gradient_accumulation_steps": "training.gradient_accumulation_steps",
                      "gradient_clipping": "training.max_grad_norm"}[dotted]
            problems.append(("training.deepspeed_config", (
                f"'{t.deepspeed_config}' sets {dotted} {given} but the recipe gives {value} ({source}); set it to "
                f"\"auto\" in the file so the recipe decides, or change {source}."
            )))
    if t.bf16 is not None and isinstance(config.get("bf16", {}).get("enabled"), bool):
        if config["bf16"]["enabled"] != t.bf16:
            problems.append(("training.deepspeed_config", (
                f"'{t.deepspeed_config}' sets bf16.enabled {str(config['bf16']['enabled']).lower()} but training.bf16 "
                f"is {str(t.bf16).lower()}; set it to \"auto\" in the file, or change training.bf16."
            )))
    return problems
