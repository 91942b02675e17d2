"""README.md of an exported model: the hub's model card, written from what the run left behind.

YAML front matter the hub reads (base_model, library_name, tags, pipeline_tag), then what was trained and how, the
resolved recipe (secrets were removed when the run wrote it, and again by read_run), the final metrics from
summary.json, and how to load the model.
"""

from __future__ import annotations

import os

import yaml

from fai_rl.algorithms import REGISTRY
from fai_rl.export.merge import RunInfo
from fai_rl.models.builtin import is_builtin_model

# Values of these variables never appear in a card, whatever a recipe or summary held.
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TINKER_API_KEY", "WANDB_API_KEY")


def model_card(note: dict, run: RunInfo, title: str, load_path: str) -> str:
    """The card's text; `load_path` (the hub repo when pushing, else the export dir) goes in the loading example."""
    base = note.get("base_model_name")
    algorithm = note.get("algorithm")
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["fai-rl", *([algorithm] if algorithm else []), *(["lora-merged"] if note["merged_lora"] else [])]}
    if base and _is_hub_id(base):
        front["base_model"] = base
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {title}", "", _what(note, run), ""]
    if note.get("adapter_trained_on_quantised_base"):
        lines += [f"> The adapter was trained on the {note['adapter_trained_on_quantised_base']}-quantised base "
                  f"(QLoRA) and merged here into the full-precision base in {note['dtype']}: the merged model is a "
                  "close approximation of the trained one (the quantisation error of the base is gone), and it is "
                  "served without bitsandbytes.", ""]
    lines += ["## How to use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"path = {load_path!r}",
              "tokenizer = AutoTokenizer.from_pretrained(path)",
              "model = AutoModelForCausalLM.from_pretrained(path)",
              "messages = [{\"role\": \"user\", \"content\": \"Hello\"}]",
              "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              "out = model.generate(**ids, max_new_tokens=64)",
              "print(tokenizer.decode(out[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True))", "```", "",
              "fai-rl-eval and fai-rl-generate take this dir (or repo) as the model, like a run dir.", ""]
    metrics = _metrics_table(run.summary)
    if metrics:
        lines += ["## Final metrics", "", "From the run's `summary.json` (first and last logged value).", "",
                  *metrics, ""]
    if run.recipe:
        lines += ["## Training recipe", "", "The resolved recipe the run trained with (`recipe.resolved.yaml`, secrets "
                  "removed); `fai-rl-train --recipe` on it repeats the run.", "", "```yaml",
                  yaml.safe_dump(run.recipe, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    lines += ["## Provenance", "", "`fai_rl.json` in this dir records where the weights came from:", "", "```json",
              *_provenance(note), "```", ""]
    return _scrub("\n".join(lines))


def _what(note: dict, run: RunInfo) -> str:
    if note["source_kind"] == "base":
        return (f"`{note['base_model_name']}` as published, re-saved by fai-rl-export in {note['dtype']} as "
                f"safetensors ({note['parameters']:,} parameters); no training.")
    algorithm = note.get("algorithm")
    did = REGISTRY[algorithm].title if algorithm in REGISTRY else (algorithm or "an unknown algorithm")
    base = note.get("base_model_name") or "an unrecorded base model"
    backend = note.get("backend") or "local"
    step = note.get("global_step")
    how = "a LoRA adapter, merged into the base weights for this export" if note["merged_lora"] else "all weights"
    where = "on [Tinker](https://thinkingmachines.ai/tinker/)" if backend == "tinker" else "with the local backend"
    steps = f" for {step} steps" if step else ""
    text = (f"`{base}` post-trained with fai-rl by {did}{steps}, {where}; "
            f"trained: {how}. Saved in {note['dtype']} as safetensors, {note['parameters']:,} parameters.")
    if run.recipe is None:
        text += " The training run's recipe was not found next to the weights, so it is not shown."
    return text


def _metrics_table(summary: dict | None) -> list[str]:
    if not summary or not summary.get("metrics"):
        return []
    rows = ["| metric | first | last |", "|---|---|---|"]
    for key, value in sorted(summary["metrics"].items()):
        rows.append(f"| {key} | {value['first']:.4g} | {value['last']:.4g} |")
    extra = {k: v for k, v in summary.items() if k != "metrics" and isinstance(v, (int, float, str)) and v is not None}
    if extra:
        rows += ["", ", ".join(f"{k}: {v}" for k, v in extra.items() if k not in ("final_dir",))]
    return rows


def _provenance(note: dict) -> list[str]:
    import json

    return json.dumps({k: v for k, v in note.items() if v is not None}, indent=2).splitlines()


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not is_builtin_model(name)


def _scrub(text: str) -> str:
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return text
