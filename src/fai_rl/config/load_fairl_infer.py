"""Load FAI-RL's inference and evaluation recipes (schema: fai_rl.config.schema_fairl_infer) with our machinery:
unknown keys with 'did you mean', types, `key=value` overrides (FAI-RL's bare `temperature=0` or our dotted
`inference.temperature=0`), every problem with its file:line, all reported together.

Keys are read from the environment only: a recipe's `api_key:` may be null or a placeholder (FAI-RL ships
`"<YOUR_API_KEY>"`); a value that looks like a real key is refused without being echoed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fai_rl.config.load import _finish, _load_typed
from fai_rl.config.load_check import _all_field_paths
from fai_rl.config.schema_fairl_infer import VLM_KEYS, FaiRLEvalRecipe, FaiRLInferenceRecipe
from fai_rl.errors import RecipeError

_FAIRL_KEYS = {"model_paths", "dataset_name", "output_file", "api_endpoint", "dataset_columns", "system_prompt"}
_PLACEHOLDER = re.compile(r"^\s*$|<[^>]*>|your|placeholder|changeme|xxx|^(empty|none|null|dummy|sk-\.\.\.)$",
                          re.IGNORECASE)


def is_fairl_eval_recipe(path: str | Path) -> bool:
    """True for FAI-RL's evaluation layout: `evaluation:` holding its keys (model_paths, dataset_name, output_file,
    ...) and no `tasks:` (ours)."""
    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # our loader reports the file's problem
    section = tree.get("evaluation") if isinstance(tree, dict) else None
    return isinstance(section, dict) and "tasks" not in section and bool(_FAIRL_KEYS & set(section))


def looks_like_real_key(value: str | None) -> bool:
    """A value in `api_key:` that is not null, empty or a placeholder ('<YOUR_API_KEY>', 'EMPTY', 'your-key')."""
    return bool(value) and not _PLACEHOLDER.search(str(value)) and len(str(value)) >= 12


def load_fairl_recipe(path: str | Path, overrides: list[str] | None, section: str):
    """The typed recipe of FAI-RL's `inference:` or `evaluation:` layout; raises RecipeError with every problem."""
    schema = FaiRLInferenceRecipe if section == "inference" else FaiRLEvalRecipe
    dotted = [o if o.split("=", 1)[0].startswith(section + ".") else f"{section}.{o}" for o in overrides or []]
    recipe, ctx = _load_typed(Path(path), dotted, schema, _all_field_paths(schema))
    return _finish(recipe, ctx, check_fairl_rules(getattr(recipe, section), section))


def check_fairl_rules(c, section: str) -> list[tuple[str, str]]:
    """Cross-field problems of a FAI-RL inference/evaluation section, as (dotted key, message)."""
    out = []
    if looks_like_real_key(c.api_key):  # never echo it
        out.append((f"{section}.api_key", "holds what looks like a real API key (not shown); keys are read from the "
                    "environment only: remove it (or leave a placeholder / null) and export FAI_RL_API_KEY (or the "
                    "provider's OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY)."))
    if not c.model_paths and not c.model:
        out.append((f"{section}.model_paths", "no model: give model_paths (local models or checkpoints) or model "
                    "(a hub/built-in id, or the API's model name with api_endpoint)."))
    if c.model_paths and c.api_endpoint:
        out.append((f"{section}.api_endpoint", f"'{c.api_endpoint}' with model_paths: an API model is named by "
                    "`model`; remove model_paths or api_endpoint."))
    if c.api_endpoint and not c.model:
        out.append((f"{section}.model", "api_endpoint without model: name the API's model (e.g. gpt-4o-mini)."))
    if c.api_endpoint and not re.match(r"^https?://[^<>\s]+$", c.api_endpoint):
        out.append((f"{section}.api_endpoint", f"'{c.api_endpoint}' is not an http(s) URL; give your endpoint, e.g. "
                    "http://127.0.0.1:8000/v1 (fai-rl-serve) or https://api.openai.com/v1/chat/completions."))
    for key in VLM_KEYS:
        value = getattr(c, key)
        if key.endswith("_columns") and value:
            out.append((f"{section}.{key}", f"{value}: image and video inference comes with the VLM issue, not yet; "
                        f"remove {key} (text-only inference)."))
    if c.s3_upload_results:
        out.append((f"{section}.s3_upload_results", "true: uploading results to S3 is not offered by fai-rl-"
                    f"{section}; set it false and copy {c.output_file} yourself."))
    if not c.user_prompt and "{" not in (c.system_prompt or ""):
        out.append((f"{section}.system_prompt", "has no {column} placeholder: in flat mode it is the whole prompt, "
                    "filled per row; add e.g. {prompt}, or set user_prompt: \"{prompt}\" for chat mode."))
    if not str(c.output_file).endswith((".csv", ".jsonl")):
        out.append((f"{section}.output_file", f"'{c.output_file}': name a .csv (FAI-RL's format) or .jsonl file."))
    if c.dataset_name.startswith("s3://"):
        out.append((f"{section}.dataset_name", f"'{c.dataset_name}': s3:// inference data is not offered yet; copy "
                    "it locally (aws s3 cp) and give the file."))
    if not 0 < c.top_p <= 1:
        out.append((f"{section}.top_p", f"{c.top_p}: must be in (0, 1]."))
    if c.temperature < 0:
        out.append((f"{section}.temperature", f"{c.temperature}: must be 0 or more."))
    for key in ("max_new_tokens", "batch_size", "api_concurrency"):
        if getattr(c, key) < 1:
            out.append((f"{section}.{key}", f"{getattr(c, key)}: must be at least 1."))
    if c.api_max_retries < 0:
        out.append((f"{section}.api_max_retries", f"{c.api_max_retries}: must be 0 or more."))
    return out


__all__ = ["RecipeError", "is_fairl_eval_recipe", "load_fairl_recipe", "looks_like_real_key"]
