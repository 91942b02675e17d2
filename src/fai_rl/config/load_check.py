"""The schema check of a recipe tree: unknown keys (with a "did you mean"), types coerced, closed sets enforced.

Every problem is collected in a _Ctx, with the file:line or `command line` that wrote the key, so fai_rl.config.load
reports them all at once; what cannot be used is dropped (_BAD) and the check goes on.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from typing import Any

from omegaconf import MISSING

from fai_rl.config.load_tree import COMMAND_LINE
from fai_rl.config.schema import EvalRecipe, Recipe
from fai_rl.config.support import FAI_RL_VLM_KEYS, table_key

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)


@dataclasses.dataclass
class _Ctx:
    recipe_path: str
    lines: dict[str, int]
    overridden: set[str]
    problems: list[str]
    reported: set[str] = dataclasses.field(default_factory=set)
    all_fields: dict[str, str] = dataclasses.field(default_factory=dict)  # leaf name -> dotted path, this schema
    notes: list[str] = dataclasses.field(default_factory=list)  # one line each: what was accepted but changes nothing
    accept_fai_rl_vlm: bool = False  # training recipes accept FAI-RL's sft_vlm-only keys (with a note)

    def where(self, dotted: str) -> str:
        if dotted in self.overridden:
            return COMMAND_LINE
        probe = dotted
        while probe:  # a key inside a list item given by the file is reported at its nearest known line
            if probe in self.lines:
                return f"{self.recipe_path}:{self.lines[probe]}"
            parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
            probe = "" if parent == probe else parent  # a top-level key has no parent
        return self.recipe_path

    def add(self, dotted: str, message: str) -> None:
        self.reported.add(dotted)
        self.problems.append(f"{self.where(dotted)}: {dotted}: {message}")


def _all_field_paths(cls: type, prefix: str = "") -> dict[str, str]:
    """leaf field name -> dotted path, over the whole schema (for 'did you mean model.x?' across sections)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hint):
            out.update(_all_field_paths(hint, path))
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out.update(_all_field_paths(typing.get_args(hint)[0], f"{path}[]"))
        else:
            out.setdefault(f.name, path)
    return out


_ALL_FIELDS = _all_field_paths(Recipe)
_EVAL_FIELDS = _all_field_paths(EvalRecipe)


def _suggest(word: str, options: list[str]) -> str | None:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None


def _check_section(value: Any, cls: type, dotted: str, ctx: _Ctx) -> Any:
    """Check a mapping against a dataclass; returns the cleaned mapping (or None when it cannot be used)."""
    if not isinstance(value, dict):
        ctx.add(dotted, f"expected a section (a mapping of keys), got {value!r}; write it as `key: value` lines.")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    cleaned: dict[str, Any] = {}
    for key, sub in value.items():
        sub_dotted = f"{dotted}.{key}" if dotted else str(key)
        if key not in fields:
            if ctx.accept_fai_rl_vlm and table_key(sub_dotted) in FAI_RL_VLM_KEYS:
                ctx.notes.append(f"{sub_dotted}: read only by FAI-RL's multimodal sft_vlm trainer, which fai-rl does "
                                 "not offer; no effect in this run (FAI-RL recipe key, accepted).")
                continue
            near = _suggest(str(key), list(fields))
            if _SECRET_KEY.search(str(key)):  # the value is never echoed, and the way to pass it is named
                hint = ("secrets do not belong in a recipe (it is saved with the run); remove it and set the "
                        "environment variable instead (TINKER_API_KEY, WANDB_API_KEY, HF_TOKEN).")
            elif near:
                hint = f"did you mean {dotted + '.' if dotted else ''}{near}?"
            elif str(key) in (ctx.all_fields or _ALL_FIELDS):
                hint = f"did you mean {(ctx.all_fields or _ALL_FIELDS)[str(key)]}?"
            else:
                hint = f"known keys here: {', '.join(fields)}."
            ctx.add(sub_dotted, f"unknown key; {hint}")
            continue
        out = _check_value(sub, hints[key], fields[key], sub_dotted, ctx)
        if out is not _BAD:
            cleaned[key] = out
    for name, f in fields.items():
        if name not in value and f.default is MISSING and f.default_factory is dataclasses.MISSING:
            ctx.add(
                f"{dotted}.{name}" if dotted else name,
                f"required key is missing; add it to the recipe or pass {dotted}.{name}=... ({f.metadata['help']})",
            )
    return cleaned


_BAD = object()


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_value(value: Any, hint: Any, f: dataclasses.Field | None, dotted: str, ctx: _Ctx) -> Any:
    if isinstance(value, str) and "${" in value:
        return value  # an omegaconf interpolation: typed when it is resolved
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return _check_choice(None, f, dotted, ctx)
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    elif value is None:
        ctx.add(dotted, f"null is not allowed here; {_expected(hint, f)}.")
        return _BAD
    if dataclasses.is_dataclass(hint):
        out = _check_section(value, hint, dotted, ctx)
        return _BAD if out is None else out
    if origin is list:
        if not isinstance(value, list):
            if isinstance(value, (str, int, float)) and not dataclasses.is_dataclass(args[0]):
                value = [value]  # `lora_target_modules: q_proj` means a list of one
            else:
                ctx.add(dotted, f"expected a list, got {_describe(value)}; write it as [a, b] or `- item` lines.")
                return _BAD
        items = [_check_value(v, args[0], None, f"{dotted}[{i}]", ctx) for i, v in enumerate(value)]
        return _BAD if any(i is _BAD for i in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            ctx.add(dotted, f"expected a mapping of names to values, got {_describe(value)}.")
            return _BAD
        return value
    if hint is Any:
        return value
    out = _coerce_scalar(value, hint)
    if out is _BAD:
        ctx.add(dotted, f"{_describe(value)} is not valid; {_expected(hint, f)}.")
        return _BAD
    return _check_choice(out, f, dotted, ctx)


def _coerce_scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        if isinstance(value, bool):
            return _BAD
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                out = float(value)
            except ValueError:
                return _BAD
            return out if math.isfinite(out) else _BAD
        return _BAD
    if hint is str:
        if isinstance(value, (dict, list)):
            return _BAD
        return value if isinstance(value, str) else str(value)
    return value


def _expected(hint: Any, f: dataclasses.Field | None) -> str:
    if f is not None and "choices" in f.metadata:
        return "use one of " + "|".join("null" if c is None else str(c) for c in f.metadata["choices"])
    names = {bool: "true or false", int: "a whole number, e.g. 8", float: "a number, e.g. 1e-4", str: "a string"}
    return "expected " + names.get(hint, getattr(hint, "__name__", str(hint)))


def _check_choice(value: Any, f: dataclasses.Field | None, dotted: str, ctx: _Ctx) -> Any:
    choices = f.metadata.get("choices") if f is not None else None
    if choices is None or value in choices:
        return value
    if dotted == "training.algorithm" and value == "sft_vlm":
        ctx.add(dotted, "'sft_vlm' (FAI-RL's multimodal SFT of vision-language models) is not offered by fai-rl yet; "
                "for text models use sft (same recipe keys), or train the VLM with FAI-RL.")
        return _BAD
    near = _suggest(str(value), [str(c) for c in choices if c is not None])
    shown = "|".join("null" if c is None else str(c) for c in choices)
    ctx.add(dotted, f"{value!r} is not one of {shown}; " + (f"did you mean '{near}'?" if near else "use one of those."))
    return _BAD
