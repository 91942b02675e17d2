"""What a user may name as "the model" after training, resolved to something loadable.

`fai-rl-eval`, `fai-rl-generate` and `fai-rl-export` all accept the same forms:

    runs/sft                     a run dir: its final/ (or, for a Tinker run without a download, its sampler weights)
    runs/sft/final               a full HF model dir, or a PEFT adapter whose fai_rl.json / adapter_config.json names its base
    runs/sft/checkpoint-200      a checkpoint (model or adapter files, as the trainer saved them)
    Qwen/Qwen3-0.6B, fai-rl/tiny a hub id or built-in model: the base weights
    tinker://<run>/sampler_weights/final   Tinker sampler weights (sampled on the service; base_model names the tokenizer)

resolve_model_source only reads small JSON files; load_for_inference loads the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fai_rl.errors import UsageError
from fai_rl.models.builtin import is_builtin_model
from fai_rl.models.load import resolve_model_path

Kind = Literal["full_model", "peft_adapter", "base", "tinker"]


@dataclass
class ModelSource:
    """A model named by the user, resolved. `path` is the dir (or id, or tinker:// path) to load."""

    spec: str
    kind: Kind
    path: str
    base: str | None = None  # adapters: the base model path or id; tinker: the base model name (for the tokenizer)
    run_dir: Path | None = None  # the run this came from, when it came from one
    note: dict = field(default_factory=dict)  # the run's fai_rl.json, when there is one

    @property
    def tokenizer_path(self) -> str:
        """Where the tokenizer lives: saved next to the weights by fai-rl, else the base model's."""
        if self.kind in ("full_model", "peft_adapter") and (Path(self.path) / "tokenizer_config.json").exists():
            return self.path
        return self.base or self.path

    def describe(self) -> str:
        if self.kind == "peft_adapter":
            return f"{self.spec} (LoRA adapter on {self.base})"
        if self.kind == "tinker":
            return f"{self.spec} (Tinker sampler weights on {self.base})"
        return f"{self.spec} ({'base model' if self.kind == 'base' else 'full model'})"


def resolve_model_source(spec: str, what: str = "--model", base_model: str | None = None) -> ModelSource:
    """Resolve `spec` (see the module doc); `what` names the flag or key in errors; base_model for tinker:// paths."""
    if spec.startswith("tinker://"):
        if not base_model:
            raise UsageError(f"{what}: {spec} is a Tinker path; also name its base model (--base-model NAME), "
                             "which supplies the tokenizer.")
        return ModelSource(spec, "tinker", spec, base=base_model)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_dir(spec, path, what)
    if path.exists():
        raise UsageError(f"{what}: '{spec}' is a file; name a run dir, a model or adapter dir, or a model id.")
    if is_builtin_model(spec):
        return ModelSource(spec, "base", resolve_model_path(spec))
    if _looks_like_path(spec):
        raise UsageError(f"{what}: '{spec}' does not exist; name a run dir (output_dir), its final/ or a "
                         "checkpoint-N dir, a model dir, a hub id, or a tinker:// path.")
    return ModelSource(spec, "base", spec)  # a hub id: from_pretrained will say whether it can be reached


def _from_dir(spec: str, path: Path, what: str) -> ModelSource:
    if (path / "recipe.resolved.yaml").exists() or (path / "metrics.jsonl").exists():  # a run dir
        if (path / "final").is_dir():
            source = _from_dir(spec, path / "final", what)
            source.run_dir = path
            return source
        sampler = _tinker_sampler(path)
        if sampler is not None:
            return ModelSource(spec, "tinker", sampler[0], base=sampler[1], run_dir=path)
        ckpts = sorted((p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                       key=lambda p: int(p.name.split("-")[-1]))
        hint = f" (its latest checkpoint is {ckpts[-1]})" if ckpts else ""
        raise UsageError(f"{what}: the run in '{spec}' has no final/ yet{hint}; let it finish, resume it with "
                         "fai-rl-train --resume, or name a checkpoint dir.")
    note = _read_json(path / "fai_rl.json")
    run_dir = path.parent if (path.parent / "recipe.resolved.yaml").exists() else None
    if (path / "adapter_config.json").exists():
        adapter = _read_json(path / "adapter_config.json")
        base = note.get("base_model_path") or adapter.get("base_model_name_or_path") or note.get("base_model_name")
        if not base:
            raise UsageError(f"{what}: the adapter in '{spec}' does not name its base model "
                             "(adapter_config.json base_model_name_or_path is empty); set it, or merge it yourself.")
        if not Path(base).exists() and note.get("base_model_name") and is_builtin_model(note["base_model_name"]):
            base = resolve_model_path(note["base_model_name"])  # a built-in's cache dir moved: rebuild it
        return ModelSource(spec, "peft_adapter", str(path), base=str(base), run_dir=run_dir, note=note)
    if (path / "config.json").exists():
        return ModelSource(spec, "full_model", str(path), run_dir=run_dir, note=note)
    raise UsageError(f"{what}: '{spec}' holds neither a model (config.json) nor a LoRA adapter "
                     "(adapter_config.json), nor is it a fai-rl run dir.")


def _tinker_sampler(run_dir: Path) -> tuple[str, str] | None:
    """(last sampler path, base model name) of a Tinker run that kept its weights on the service."""
    record = _read_json(run_dir / "checkpoints.json")
    samplers = [c["path"] for c in record.get("checkpoints", []) if c.get("kind") == "sampler"]
    return (samplers[-1], record["base_model"]) if samplers else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read it ({e}); the run dir looks damaged.") from None


def _looks_like_path(spec: str) -> bool:
    # `runs/x` is also the shape of a hub id (owner/name): a first part that is a local dir says it is a path
    return (spec.startswith((".", "/", "~")) or spec.count("/") != 1 or spec.endswith("/")
            or Path(spec.split("/")[0]).is_dir())


def load_for_inference(source: ModelSource, device: str | None = None, dtype: str = "auto", merge: bool = True):
    """(model in eval mode on `device`, tokenizer with a pad token) of a local source; LoRA merged unless merge=False."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.kind == "tinker":
        raise UsageError(f"{source.spec} lives on Tinker; it is sampled there, not loaded here.")
    from fai_rl.models.load import accelerator

    device = device or accelerator()
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    weights = source.base if source.kind == "peft_adapter" else source.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_path)
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch_dtype)
        if source.kind == "peft_adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source.path)
            if merge:
                model = model.merge_and_unload()
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load {source.describe()}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
