"""Render the recipe schema as Markdown: `python -m fai_rl.config.docs > docs/recipe-reference.md`.

Generated from the dataclasses in fai_rl.config.schema, so the reference cannot drift from what is validated
(tests/test_recipe_schema.py compares the committed file with this output).
"""

from __future__ import annotations

import dataclasses
import typing

from omegaconf import MISSING

from fai_rl.config.schema import EvalRecipe, Recipe


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


def _section(cls, prefix: str, out: list[str]) -> None:
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
        rows.append(f"| `{key}` | {_type_name(hint)} | {_default(f)} | {help_text} |")
    if rows:
        out += [f"## `{prefix or 'top level'}`", "", (cls.__doc__ or "").strip(), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for sub, key in nested:
        _section(sub, key, out)


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Recipe reference",
        "",
        "Generated from `src/fai_rl/config/schema.py` by `make docs`; do not edit by hand.",
        "Every key can be overridden on the command line: `fai-rl-train --recipe R.yaml training.learning_rate=5e-5`.",
        "",
    ]
    _section(Recipe, "", out)
    out += [
        "# Evaluation recipes (`fai-rl-eval`)",
        "",
        "A second recipe type, loaded and checked the same way: `fai-rl-eval --recipe EVAL.yaml evaluation.seed=1`. "
        "Guide and examples: [evaluation.md](evaluation.md).",
        "",
    ]
    _section(EvalRecipe, "", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
