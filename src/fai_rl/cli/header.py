"""The short header a run prints at its start (and `--dry-run` shows): what will run, on which data, for how long, in
which precision with which automatic speed choices, and the keys that differ from the defaults.

The full resolved recipe (only the keys this run reads) is output_dir/recipe.resolved.yaml, and `--dry-run --verbose`
prints it; a console of 160 lines of it hid the few that matter (torchtune's `log_config` writes the file, LitGPT's
`hyperparameters.yaml` too). The header's first line keeps the words "# resolved recipe": it is that, in short.
"""

from __future__ import annotations

import math
from typing import Any

from fai_rl.algorithms import spec_of
from fai_rl.config.load import _DEFAULTS as SCHEMA_DEFAULTS  # table key -> schema default: the loader's own table
from fai_rl.config.load import recipe_to_dict
from fai_rl.config.schema import Recipe
from fai_rl.config.support import table_key

WIDTH = 118
# Said on their own header lines, so not repeated among the changed keys.
_SHOWN = ("training.algorithm", "training.backend", "training.output_dir", "model.base_model_name",
          "training.deepspeed_config", "training.max_steps", "training.num_train_epochs")
_SHOWN_ITEM_KEYS = ("name", "split")  # of each data.datasets / data.eval_datasets entry


def run_header(recipe: Recipe, prepared: Any, processes: int) -> str:
    """The header's lines (under 30 for any recipe: the changed keys wrap, several to a line)."""
    t, spec = recipe.training, spec_of(recipe.training.algorithm)
    lines = [f"# resolved recipe, in short (all of it: {t.output_dir}/recipe.resolved.yaml, or --dry-run --verbose)"]
    where = "on Tinker" if t.backend == "tinker" else f"locally, {processes} process{'es' if processes > 1 else ''}"
    if t.deepspeed_config:
        where += f", DeepSpeed {t.deepspeed_config}"
    workflow = f", workflow {recipe.workflow.type}" if recipe.workflow.type != "single" else ""
    what = spec.title if spec.title.startswith(t.algorithm.upper()) else f"{t.algorithm} ({spec.title})"
    lines.append(f"algorithm:   {what}, {where}{workflow}")
    lines.append(f"model:       {recipe.model.base_model_name}, {_trained(recipe)}")
    lines += _data_lines(recipe, prepared)
    lines.append(f"steps:       {_steps(recipe, prepared, processes)}")
    lines.append("             " + ", ".join(f"{what} every {n}" for what, n in (
        ("log", t.logging_steps), ("eval", t.eval_steps), ("save", t.save_steps)) if n))
    if t.backend == "local":
        from fai_rl.backends.local.common import resolved_performance
        from fai_rl.models.load import use_bf16

        precision = "bf16 mixed precision" if use_bf16(recipe) else "fp16 mixed precision" if t.fp16 else "float32"
        lines.append(f"precision:   {precision}")
        lines.append("performance: " + ", ".join(f"{k} {_on(v)}" for k, v in resolved_performance(recipe).items()))
    changed = [f"{k}={_show(v)}" for k, v in changed_keys(recipe).items()] or ["(none: all at their defaults)"]
    lines.append("changed:     " + changed[0])
    for item in changed[1:]:  # several to a line, never broken inside one
        if len(lines[-1]) + 2 + len(item) > WIDTH:
            lines.append(" " * 13 + item)
        else:
            lines[-1] += "  " + item
    return "\n".join(lines)


def changed_keys(recipe: Recipe) -> dict[str, Any]:
    """Dotted key -> value for the keys this run reads whose value is not the default: the schema's, the algorithm's
    (the registry's defaults for null keys) or the one the loader derives from another key (epsilon_high ...)."""
    flat: dict[str, Any] = {}
    _flatten(recipe_to_dict(recipe), "", flat)
    defaults = _run_defaults(recipe)
    out = {}
    for key, value in flat.items():
        row = table_key(key)
        item_key = row.endswith(tuple(f"[].{k}" for k in _SHOWN_ITEM_KEYS)) and row.startswith("data.datasets[]")
        if key in _SHOWN or item_key or value == "***":
            continue
        default = defaults.get(key, SCHEMA_DEFAULTS.get(row))
        if value != default and not (value in ([], {}, None) and default in ([], {}, None)):
            out[key] = value
    return out


def _run_defaults(recipe: Recipe) -> dict[str, Any]:
    t, spec = recipe.training, spec_of(recipe.training.algorithm)
    defaults = {f"training.{k}": v for k, v in spec.defaults.items()}
    # load._fill_derived: nulls made explicit from other keys; a value equal to what it derives is no change
    defaults["training.epsilon_high"] = t.epsilon if t.epsilon_high == t.epsilon else spec.defaults.get("epsilon_high")
    defaults["training.num_generations_eval"] = t.num_generations if spec.samples_groups else 1
    defaults["tinker.save_every"] = t.save_steps
    if t.metric_for_best_model:
        defaults["training.greater_is_better"] = not t.metric_for_best_model.endswith("loss")
    return defaults


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            _flatten(value, f"{prefix}[{i}]", out)
    elif prefix:
        out[prefix] = node


def _trained(recipe: Recipe) -> str:
    m = recipe.model
    if recipe.training.backend == "tinker":
        return f"LoRA adapter r={recipe.tinker.lora_rank} on the Tinker service"
    if not m.use_lora:
        return "all weights trained"
    quant = " on a 4-bit base (QLoRA)" if m.load_in_4bit else " on an 8-bit base" if m.load_in_8bit else ""
    return f"LoRA adapter r={m.lora_r}{quant}"


def _data_lines(recipe: Recipe, prepared: Any) -> list[str]:
    train, evaluation = _sizes(prepared)
    d = recipe.data
    names = ", ".join(_dataset(s) for s in d.datasets)
    lines = [f"data:        train {_count(train)}{names}; max_length {d.max_length}"]
    if d.eval_datasets:
        lines.append(f"             eval {_count(evaluation)}{', '.join(_dataset(s) for s in d.eval_datasets)}")
    elif d.eval_split_ratio:
        lines.append(f"             eval {_count(evaluation)}{d.eval_split_ratio:g} of train held out")
    else:
        lines.append("             eval none")
    return lines


def _dataset(spec) -> str:
    return f"{spec.name}" + (f" [{spec.split}]" if spec.split else "")


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,} rows from "


def _sizes(prepared: Any) -> tuple[int | None, int | None]:
    """Train and eval rows of what a backend's prepare() returned: every Prepared* holds them as train/eval (SFT's
    in .data, PPO's as train_rows/eval_rows); None where a backend keeps them otherwise."""
    holder = getattr(prepared, "data", prepared)
    sizes = []
    for names in (("train", "train_rows"), ("eval", "eval_rows")):
        rows = next((getattr(holder, n) for n in names if isinstance(getattr(holder, n, None), list)), None)
        sizes.append(None if rows is None else len(rows))
    return sizes[0], sizes[1]


def _steps(recipe: Recipe, prepared: Any, processes: int) -> str:
    t, spec = recipe.training, spec_of(recipe.training.algorithm)
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * processes
    what = "completions" if spec.samples else "pairs" if spec.data == "pairs" else "rows"
    batch = (f"{per_step} {what} a step ({t.per_device_train_batch_size} per device x {t.gradient_accumulation_steps} "
             f"accumulation x {processes} process{'es' if processes > 1 else ''})")
    if spec.samples_groups:
        batch += f", groups of {t.num_generations}"
    if t.max_steps is not None:
        return f"{t.max_steps} (training.max_steps) at {batch}"
    train, _ = _sizes(prepared)
    if train is None or spec.samples:
        return f"{t.num_train_epochs:g} epochs at {batch}"
    steps = math.ceil(t.num_train_epochs * math.ceil(train / per_step))
    return f"about {steps} ({t.num_train_epochs:g} epochs of {train:,} rows) at {batch}"


def _on(value: Any) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _show(value: Any) -> str:
    """A value as the YAML would write it (true, null, 0.003), long or spaced text quoted and cut."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and (not value or " " in value or len(value) > 40):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    return str(value)
