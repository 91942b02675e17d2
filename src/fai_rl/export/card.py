"""README.md model cards, written from what a run left behind: an exported model's (model_card) and the run dir's
own (run_card, written by fai-rl-train when a run ends, in place of TRL's auto card).

YAML front matter the hub reads (base_model, library_name, tags, pipeline_tag), then what was trained and how, the
resolved recipe (secrets were removed when the run wrote it, and again by read_run), the final metrics from
summary.json, and how to load the model. A run's card leads with the algorithm's headline metrics before and after,
its data and the command that ran it.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import yaml

from fai_rl.algorithms import REGISTRY
from fai_rl.artifacts import headline_metrics
from fai_rl.config.load_check import _SECRET_KEY
from fai_rl.export.merge import RunInfo, read_run
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
    lines += ["## How to use", "", *_loading_example(load_path),
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


def _loading_example(load_path: str, adapter: bool = False) -> list[str]:
    """A Python block that loads the model at `load_path` (a PEFT adapter through peft) and answers one message."""
    auto = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    imports = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer"] if adapter \
        else ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    return ["```python", *imports, "",
            f"path = {load_path!r}",
            "tokenizer = AutoTokenizer.from_pretrained(path)",
            f"model = {auto}.from_pretrained(path)",
            "messages = [{\"role\": \"user\", \"content\": \"Hello\"}]",
            "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            "out = model.generate(**ids, max_new_tokens=64)",
            "print(tokenizer.decode(out[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True))", "```", ""]


def write_run_card(run_dir: Path, command: list[str]) -> Path:
    """output_dir/README.md: the run's card (run_card), from its recipe.resolved.yaml, summary.json and final/."""
    path = Path(run_dir) / "README.md"
    path.write_text(run_card(Path(run_dir), command), encoding="utf-8")
    return path


def run_card(run_dir: Path, command: list[str]) -> str:
    """The card of a training run dir: base model, data, algorithm, the headline metrics before and after, the
    command (secret-looking override values hidden) and how to load final/."""
    run = read_run(run_dir)
    recipe, summary = run.recipe or {}, run.summary or {}
    model, data, training = recipe.get("model", {}), recipe.get("data", {}), recipe.get("training", {})
    algorithm, base = training.get("algorithm"), model.get("base_model_name") or "an unrecorded base model"
    note_file = run_dir / "final" / "fai_rl.json"
    note = json.loads(note_file.read_text(encoding="utf-8")) if note_file.exists() else {}
    adapter = note.get("kind") == "peft_adapter" or (not note and bool(model.get("use_lora")))
    front = {"library_name": "peft" if adapter else "transformers", "pipeline_tag": "text-generation",
             "tags": ["fai-rl", *([algorithm] if algorithm else [])]}
    if _is_hub_id(base):
        front["base_model"] = base
    did = REGISTRY[algorithm].title if algorithm in REGISTRY else (algorithm or "an unknown algorithm")
    step = summary.get("global_step")
    where = "on [Tinker](https://thinkingmachines.ai/tinker/)" if training.get("backend") == "tinker" \
        else "with the local backend"
    how = "a LoRA adapter" if adapter else "all weights"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {run_dir.resolve().name}", "",
             f"`{base}` post-trained with fai-rl by {did}{f' for {step} steps' if step else ''}, {where}; trained: "
             f"{how}.", "", "## Data", ""]
    for title, key in (("train", "datasets"), ("eval", "eval_datasets")):
        lines += [f"- {title}: {_dataset_line(d)}" for d in data.get(key) or []]
    if not data.get("eval_datasets"):
        ratio = data.get("eval_split_ratio")
        lines.append(f"- eval: {ratio:g} of the train rows held out" if ratio else "- eval: none")
    lines += ["", "## Results", ""]
    metrics = summary.get("metrics") or {}
    keys = headline_metrics(algorithm or "", metrics)
    if keys:
        lines += [f"{did[0].upper() + did[1:]}: its headline metrics, first and last logged value (`summary.json` "
                  "holds every metric, `curves.png` draws them).", "",
                  "| metric | first | last | change |", "|---|---|---|---|",
                  *(f"| {k} | {metrics[k]['first']:.4g} | {metrics[k]['last']:.4g} | "
                    f"{change(k, metrics[k]['first'], metrics[k]['last'])} |" for k in keys)]
    else:
        lines.append("No metrics were logged (summary.json holds none).")
    lines += ["", "## Command", "", "```bash", _command(command), "```", "",
              "`recipe.resolved.yaml` beside this card is the recipe as it ran (defaults filled in, only the keys this "
              "run reads, secrets removed): `fai-rl-train --recipe recipe.resolved.yaml` repeats the run.", "",
              "## How to use", ""]
    if (run_dir / "final").is_dir() and any(p.suffix == ".safetensors" for p in (run_dir / "final").iterdir()):
        lines += _loading_example(str(run_dir / "final"), adapter)
    elif training.get("backend") == "tinker":
        lines += ["The weights stayed on the Tinker service (`checkpoints.json`); `fai-rl-export` downloads them.", ""]
    lines += [f"`fai-rl-export {shlex.quote(str(run_dir))} --out merged` writes a standalone model dir"
              + (" (the adapter merged into its base)" if adapter else "") + " with its own card (`--push-to-hub` "
              "uploads it); fai-rl-eval and fai-rl-generate take this run dir as the model.", ""]
    return _scrub("\n".join(lines))


def change(metric: str, first: float, last: float) -> str:
    """A loss's change in percent ('-32.1%'); any other metric's as the difference ('+0.4314'): an accuracy from 0.02
    to 0.46 is +0.44, not +1783%, and a percentage of a value near 0 says nothing."""
    diff = last - first
    return f"{diff / abs(first) * 100:+.1f}%" if "loss" in metric and abs(first) > 1e-3 else f"{diff:+.4g}"


def _dataset_line(spec: dict) -> str:
    parts = [f"split `{spec['split']}`"] if spec.get("split") else []
    if spec.get("max_samples"):
        parts.append(f"at most {spec['max_samples']:,} rows")
    return f"`{spec.get('name')}`" + (f" ({', '.join(parts)})" if parts else "")


def _command(argv: list[str]) -> str:
    """The command line, with the value of every secret-looking override (wandb.api_key=...) hidden."""
    shown = [f"{a.split('=', 1)[0]}=***" if "=" in a and _SECRET_KEY.search(a.split("=", 1)[0]) else a for a in argv]
    return shlex.join(shown)


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
