"""model.init_from on the local backend: the weights a run starts from, as one plain HF model dir.

Full weights (a run's final/ or a checkpoint-N) are loaded from where they are. A LoRA adapter is merged into its
base (the dir its adapter_config.json names, else model.base_model_name, which the recipe rules check against the
adapter's run) once, and the merged model is
cached in $FAI_RL_HOME/init_from/<key>, keyed by the adapter's path, size and time, so every process and a --resume
find the same start. Either way the model's `name_or_path` is that dir, so what TRL loads as the KL reference of a
full fine-tune (training.beta > 0: `from_pretrained(model.config._name_or_path)`) is the start too, and under a new
LoRA the adapter-off model is the start. Weights only: the optimizer, scheduler and step count start fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from fai_rl.config.init_from import init_from_dir, is_adapter
from fai_rl.config.schema import ModelConfig
from fai_rl.errors import RecipeError
from fai_rl.paths import cache_home


def start_weights(model: ModelConfig, resolve_base) -> str:
    """The model dir a run with model.init_from loads (`resolve_base(model)`: the base model's dir or id)."""
    found = init_from_dir(model.init_from)
    if isinstance(found, str):  # the rules said so first; here for a dir removed since
        raise RecipeError(f"model.init_from: {found}")
    if not is_adapter(found):
        return str(found)
    # the base the adapter was trained on, as peft recorded it: model.base_model_name's dir, or for a run that itself
    # started from model.init_from with LoRA, that run's merged start; else (moved or deleted) model.base_model_name
    recorded = json.loads((found / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    base = recorded if recorded and Path(recorded).is_dir() else resolve_base(model)
    weights = next((found / f for f in ("adapter_model.safetensors", "adapter_model.bin") if (found / f).exists()),
                   found / "adapter_config.json")
    stat = weights.stat()
    key = hashlib.sha256(f"{found.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{base}".encode()).hexdigest()[:16]
    merged = cache_home() / "init_from" / f"{found.parent.name}-{found.name}-{key}"
    if not (merged / "config.json").exists():
        _merge(found, base, merged)
    return str(merged)


def _merge(adapter: Path, base: str, dest: Path) -> None:
    """Merge the adapter into its base (in the base's dtype) and rename the saved model into `dest` atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except (OSError, ValueError) as e:
            raise RecipeError(f"model.init_from: cannot merge the LoRA adapter in {adapter} into "
                              f"'{base}' ({str(e).splitlines()[0]}); give a run dir whose adapter was trained on "
                              "model.base_model_name, or its exported (fai-rl-export) full model.") from None
        model.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process renamed its copy first
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
