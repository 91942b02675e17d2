"""Load what the user named, merge a LoRA adapter into its base, save a plain HF model dir.

A full model is re-saved (safetensors) in the export dtype; an adapter is applied to its base, loaded in that dtype,
and folded in with peft's `merge_and_unload`. The base is never loaded quantised: a QLoRA adapter (trained on a 4-bit
NF4 base) is merged into the full-precision base, which is what can be saved and served; the card says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fai_rl.config.load import redact
from fai_rl.errors import UsageError
from fai_rl.models.source import ModelSource, load_for_inference

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RunInfo:
    """What the run that made a model left behind: its resolved recipe (secrets removed) and summary.json."""

    recipe: dict | None = None
    summary: dict | None = None
    metrics_tail: dict = field(default_factory=dict)


def read_run(run_dir: Path | None) -> RunInfo:
    """RunInfo of `run_dir`; empty when the model did not come from a run."""
    if run_dir is None:
        return RunInfo()
    info = RunInfo()
    recipe_file = run_dir / "recipe.resolved.yaml"
    if recipe_file.exists():
        try:
            info.recipe = redact(yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {})  # redacted again
        except yaml.YAMLError as e:
            raise UsageError(f"{recipe_file}: not valid YAML ({str(e).splitlines()[0]}); the run dir looks damaged.")
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        try:
            info.summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{summary_file}: not valid JSON ({e}); the run dir looks damaged.") from None
    return info


def quantised_base(source: ModelSource, run: RunInfo) -> str | None:
    """'4-bit' / '8-bit' when the adapter was trained on a quantised base (QLoRA), else None."""
    model = (run.recipe or {}).get("model", {})
    if source.note.get("load_in_4bit") or model.get("load_in_4bit"):
        return "4-bit"
    if source.note.get("load_in_8bit") or model.get("load_in_8bit"):
        return "8-bit"
    return None


def resolve_dtype(source: ModelSource, dtype: str) -> str:
    """The dtype to save in: as asked, or for `auto` the dtype the weights (the base's, for an adapter) declare."""
    if dtype != "auto":
        return dtype
    from transformers import AutoConfig

    weights = source.base if source.kind == "peft_adapter" else source.path
    try:
        config = AutoConfig.from_pretrained(weights)
    except (OSError, ValueError) as e:
        raise UsageError(_cannot_load(source, e)) from None
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(declared).removeprefix("torch.") if declared is not None else "float32"
    return name if name in DTYPES else "float32"


def merge_and_save(source: ModelSource, dest: Path, dtype: str, device: str, run: RunInfo) -> dict:
    """Write the merged (or re-saved) model, its tokenizer and fai_rl.json into `dest`; returns the provenance note."""
    from transformers import AutoTokenizer

    if source.kind == "peft_adapter" and not _is_local_or_id(source.base):
        raise UsageError(f"the adapter in '{source.spec}' names its base '{source.base}', which does not exist here; "
                         "pass --base-model with the base model's dir or hub id.")
    saved_dtype = resolve_dtype(source, dtype)
    began = time.time()
    try:
        model, _ = load_for_inference(source, device=device, dtype=saved_dtype, merge=True)
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_path)  # saved as it was, without the pad fix-up
    except UsageError as e:
        raise UsageError(f"{e}{_base_hint(source)}") from None
    model.config.use_cache = True  # training may have turned it off; serving wants it
    model.save_pretrained(dest)  # safetensors (transformers 5 writes nothing else)
    tokenizer.save_pretrained(dest)
    quantised = quantised_base(source, run)
    recipe = run.recipe or {}
    note = {
        "kind": "full_model",
        "exported_from": source.spec,
        "source_kind": source.kind,
        "merged_lora": source.kind == "peft_adapter",
        "base_model_name": source.note.get("base_model_name") or recipe.get("model", {}).get("base_model_name")
        or (source.base if source.kind == "peft_adapter" else source.spec if source.kind == "base" else None),
        "base_model_path": source.base if source.kind == "peft_adapter" else None,
        "adapter_trained_on_quantised_base": quantised,
        "dtype": saved_dtype,
        "algorithm": source.note.get("algorithm") or recipe.get("training", {}).get("algorithm"),
        "backend": source.note.get("backend") or recipe.get("training", {}).get("backend"),
        "global_step": source.note.get("global_step") or (run.summary or {}).get("global_step"),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "merge_time_s": round(time.time() - began, 2),
        "load_with": "transformers.AutoModelForCausalLM.from_pretrained(model_dir)",
    }
    for key in ("tinker_state_path", "tinker_export_path"):
        if source.note.get(key):
            note[key] = source.note[key]
    (dest / "fai_rl.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return note


def _is_local_or_id(base: str | None) -> bool:
    if not base:
        return False
    if Path(base).expanduser().exists():
        return True
    return not base.startswith((".", "/", "~")) and base.count("/") == 1  # a hub id: from_pretrained will say


def _cannot_load(source: ModelSource, error: BaseException) -> str:
    return f"cannot load {source.describe()}: {str(error).splitlines()[0]}{_base_hint(source)}"


def _base_hint(source: ModelSource) -> str:
    if source.kind == "peft_adapter":
        return "; if the base model lives elsewhere, pass --base-model with its dir or hub id"
    return ""
