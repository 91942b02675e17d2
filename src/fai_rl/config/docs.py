"""Render the recipe schema as Markdown: `python -m fai_rl.config.docs > docs/recipe-reference.md`.

Generated from the dataclasses in fai_rl.config.schema, so the reference cannot drift from what is validated
(tests/test_recipe_schema.py compares the committed file with this output).
"""

from __future__ import annotations

import dataclasses
import typing

from omegaconf import MISSING

from fai_rl.algorithms import REGISTRY
from fai_rl.config.schema import BACKENDS, EvalRecipe, Recipe
from fai_rl.config.support import FAI_RL_VLM_KEYS, KEYS, read_by, support_of


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(hint):
        return "section"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> str:
    if f.default is MISSING:
        return "**required**"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "" if dataclasses.is_dataclass(value) else f"`{value}`"
    return "`null`" if f.default is None else f"`{str(f.default).lower() if isinstance(f.default, bool) else f.default}`"


def _section(cls, prefix: str, out: list[str], support: bool = False) -> None:
    hints = typing.get_type_hints(cls)
    rows = []
    nested = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint):
            nested.append((hint, key))
            continue
        if inner is not None and dataclasses.is_dataclass(inner):
            nested.append((inner, f"{key}[]"))
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            shown = ", ".join("null" if c is None else f"`{c}`" for c in f.metadata["choices"])
            help_text += f" One of: {shown}."
        cells = [f"`{key}`", _type_name(hint), _default(f), help_text]
        if support:
            row = support_of(key)
            cells.insert(3, (read_by(row) + (" (FAI-RL key)" if row.fai_rl else "")) if row else "")
        rows.append("| " + " | ".join(cells) + " |")
    if rows:
        out += [f"## `{prefix or 'top level'}`", "", (cls.__doc__ or "").strip(), ""]
        head = ["key", "type", "default", "read by", "meaning"] if support else ["key", "type", "default", "meaning"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows, ""]
    for sub, key in nested:
        _section(sub, key, out, support)


def _algorithms() -> list[str]:
    """The values of training.algorithm, from the registry (src/fai_rl/algorithms.py)."""
    out = [
        "## Algorithms",
        "",
        "`training.algorithm`, from the registry (`src/fai_rl/algorithms.py`). Data: `rows` prompt/reply rows or chat "
        "messages, `text` raw documents packed into `data.max_length` blocks, `pairs` chosen/rejected replies to a "
        "prompt, `prompts` prompts whose completions are sampled and rewarded. Defaults fill the training keys the "
        "recipe leaves null.",
        "",
        "| algorithm | what | data | defaults | " + " | ".join(f"{b} module" for b in BACKENDS) + " |",
        "|" + "---|" * (4 + len(BACKENDS)),
    ]
    for name, s in REGISTRY.items():
        defaults = ", ".join(f"`{k}: {v}`" for k, v in s.defaults.items()) or "-"
        modules = [f"`{s.modules[b]}`" if b in s.modules else "-" for b in BACKENDS]
        out.append(f"| `{name}` | {s.summary} | {s.data} | {defaults} | " + " | ".join(modules) + " |")
    return [*out, ""]


def _fai_rl_keys() -> list[str]:
    """The FAI-RL key table: every key of FAI-RL's training config and what it maps onto here."""
    out = [
        "# FAI-RL keys",
        "",
        "Every key of Roblox FAI-RL's training config is accepted with FAI-RL's meaning ([fai-rl.md](fai-rl.md)): "
        "what each maps onto, and who reads it.",
        "",
        "| key | maps to | read by |",
        "|---|---|---|",
    ]
    for key, row in KEYS.items():
        if row.fai_rl:
            out.append(f"| `{key}` | {row.maps_to} | {read_by(row)} |")
    for key in FAI_RL_VLM_KEYS:
        out.append(f"| `{key}` | accepted, no effect: read only by FAI-RL's multimodal `sft_vlm`, not offered here | - |")
    return [*out, ""]


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Recipe reference",
        "",
        "Generated from `src/fai_rl/config/schema.py` by `make docs`; do not edit by hand.",
        "Every key can be overridden on the command line: `fai-rl-train --recipe R.yaml training.learning_rate=5e-5`.",
        "",
        "\"read by\" comes from the key-support table (`src/fai_rl/config/support.py`): a key written in a recipe "
        "that the run's algorithm or backend does not read is an error, or, for a key FAI-RL's config accepts, a "
        "one-line note. Keys of list items (`data.datasets[]`) apply to `data.eval_datasets[]` too.",
        "",
    ]
    out += _algorithms()
    _section(Recipe, "", out, support=True)
    out += _fai_rl_keys()
    out += [
        "# Evaluation recipes (`fai-rl-eval`)",
        "",
        "A second recipe type, loaded and checked the same way: `fai-rl-eval --recipe EVAL.yaml evaluation.seed=1`. "
        "Guide and examples: [evaluation.md](evaluation.md).",
        "",
    ]
    _section(EvalRecipe, "", out)
    from fai_rl.config.schema_fairl_infer import FaiRLEvalRecipe, FaiRLInferenceRecipe

    out += ["# FAI-RL inference and evaluation recipes (`fai-rl-inference`, `fai-rl-eval`)", "",
            "FAI-RL's own `inference:` and `evaluation:` layouts, read unchanged (overrides: `key=value` or "
            "`inference.key=value`); keys marked fai-rl are ours. Guide: the README.", ""]
    _section(FaiRLInferenceRecipe, "", out)
    _section(FaiRLEvalRecipe, "", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
