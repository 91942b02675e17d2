"""From the recipe's `rewards:` list to RewardFn objects, and the recipe rule that checks it first.

`function` is a built-in name (BUILTINS), `module:function` (imported; the current directory is searched last), or
`path/to/file.py:function` (relative to the current directory). check_rewards imports the functions and reads their
signatures, so a typo, a module that does not import or a kwarg the function does not take fails before any model
loads. Built-ins declare their kwargs as typed keyword-only parameters; those are checked by name, type and range.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fai_rl.config.schema import Recipe, RewardSpec
from fai_rl.errors import RecipeError
from fai_rl.imports import Unresolved, import_named
from fai_rl.rewards.countdown import countdown
from fai_rl.rewards.fairl import fairl_answer_digit, fairl_answer_match, fairl_xml_format
from fai_rl.rewards.function import TRL_INTERNAL, RewardError, RewardFn
from fai_rl.rewards.judge import llm_judge
from fai_rl.rewards.remote import MAX_RETRIES, http_reward
from fai_rl.rewards.reward_model import load_reward_model, reward_model, score_device
from fai_rl.rewards.text import exact_match, format_reward, length, math_answer

Problem = tuple[str, str]

BUILTINS: dict[str, Callable] = {
    "exact_match": exact_match,
    "math_answer": math_answer,
    "format": format_reward,
    "length": length,
    "countdown": countdown,
    "reward_model": reward_model,
    "http": http_reward,
    "llm_judge": llm_judge,
    # FAI-RL's GRPO/GSPO defaults (rewards/fairl.py); config/fai_rl.py fills them in for a recipe without rewards:.
    "fairl_answer_match": fairl_answer_match,
    "fairl_xml_format": fairl_xml_format,
    "fairl_answer_digit": fairl_answer_digit,
}
# Built-ins whose calls are costly or reach outside: a failed batch is not re-run row by row to find the bad row.
_NOT_RERUN = ("reward_model", "http", "llm_judge")
_RESERVED = ("prompts", "completions", *TRL_INTERNAL)


def check_rewards(recipe: Recipe) -> list[Problem]:
    """Recipe rule (for load_recipe's extra_rules): every reward resolves and accepts what it will be given."""
    problems: list[Problem] = []
    for i, spec in enumerate(recipe.rewards):
        key = f"rewards[{i}]"
        if not math.isfinite(spec.weight):
            problems.append((f"{key}.weight", f"{spec.weight} must be a finite number, e.g. 1.0."))
        try:
            fn = resolve_function(spec.function)
        except Unresolved as e:
            problems.append((f"{key}.function", str(e)))
            continue
        if spec.function in BUILTINS:
            problems.extend((f"{key}.kwargs{sub}", msg) for sub, msg in _builtin_kwargs(spec.function, spec.kwargs)[1])
        else:
            problems.extend(_signature_problems(fn, spec, key))
    return problems


def build_rewards(recipe: Recipe) -> list[RewardFn]:
    """The recipe's rewards as RewardFn objects (names made unique for logging); loads reward models now.

    Raises RecipeError with check_rewards' problems when called on a recipe that has not been through load_recipe.
    """
    problems = check_rewards(recipe)
    if problems:
        raise RecipeError([f"{key}: {message}" for key, message in problems])
    fns, seen, failures = [], {}, []
    for i, spec in enumerate(recipe.rewards):
        fn = resolve_function(spec.function)
        builtin = spec.function in BUILTINS
        kwargs = _builtin_kwargs(spec.function, spec.kwargs)[0] if builtin else dict(spec.kwargs)
        base = spec.function if builtin else spec.function.rpartition(":")[2]
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        if spec.function == "reward_model":
            try:
                load_reward_model(kwargs["model"], score_device())
            except RewardError as e:
                failures.append(f"rewards[{i}].kwargs.model: {e}")
        fns.append(RewardFn(
            fn, name=name, weight=spec.weight, kwargs=kwargs, where=f"rewards[{i}]",
            locate_failing_row=spec.function not in _NOT_RERUN,
        ))
    if failures:
        raise RecipeError(failures)
    return fns


# ----------------------------------------------------------------------------------------------------------------------
# Resolving `function`


def recipe_rewards(recipe: Recipe) -> list:
    """The recipe's reward functions, plus model.reward_model_name as the built-in `reward_model` reward (weight 1)."""
    from fai_rl.models.load import resolve_model_path

    fns = build_rewards(recipe)
    name = recipe.model.reward_model_name
    if name is None:
        return fns
    from fai_rl.config.fai_rl import FRESH_REWARD_HEAD

    path = resolve_model_path(name)
    fresh = bool(recipe.__dict__.get(FRESH_REWARD_HEAD))  # FAI-RL's PPO: value_model_name scores with a fresh head
    try:
        load_reward_model(path, score_device(), fresh)  # loaded (and cached) now, so a bad model fails before training
    except RewardError as e:
        raise RecipeError(f"model.reward_model_name: {e}") from None
    label = "reward_model" if all(f.name != "reward_model" for f in fns) else "reward_model_name"
    kwargs = {"model": path, **({"fresh_head": True} if fresh else {})}
    return [*fns, RewardFn(BUILTINS["reward_model"], name=label, kwargs=kwargs,
                           where="model.reward_model_name", locate_failing_row=False)]


def resolve_function(function: str) -> Callable:
    """The callable a `function` string names; Unresolved (message: why + fix) when there is none."""
    function = function.strip()
    if ":" not in function:
        if function in BUILTINS:
            return BUILTINS[function]
        near = difflib.get_close_matches(function, list(BUILTINS), n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise Unresolved(
            f"'{function}' is not a built-in reward; {hint}built-ins: {', '.join(BUILTINS)}. Name your own as "
            "module:function or path/to/file.py:function."
        )
    module, target, attr = import_named(function, "module:function or path/to/file.py:function")
    fn = getattr(module, attr, None)
    if fn is None:
        own = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_") and not inspect.isclass(v)]
        near = difflib.get_close_matches(attr, own, n=1, cutoff=0.6)
        hint = f"did you mean '{target}:{near[0]}'?" if near else f"its functions: {', '.join(own) or 'none'}."
        raise Unresolved(f"'{target}' has no '{attr}'; {hint}")
    if inspect.isclass(fn) or not callable(fn):
        raise Unresolved(f"'{function}' is a {type(fn).__name__}, not a function; name a function.")
    if inspect.iscoroutinefunction(fn):
        raise Unresolved(f"'{function}' is async; rewards are called synchronously, so make it a plain `def`.")
    return fn


# ----------------------------------------------------------------------------------------------------------------------
# Signatures of user functions


def _signature_problems(fn: Callable, spec: RewardSpec, key: str) -> Iterator[Problem]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # no signature to read (some C callables): it is checked when called
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    by_keyword = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional_only = [n for n, p in params.items() if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if "completions" not in by_keyword and not takes_any:
        yield f"{key}.function", (
            f"'{spec.function}' takes ({', '.join(params)}) but no `completions`; rewards are called as "
            "f(prompts=..., completions=..., **columns, **kwargs): add a `completions` parameter (and **kwargs for "
            "what it does not use)."
        )
    if positional_only:
        yield f"{key}.function", (
            f"'{spec.function}' has positional-only parameters ({', '.join(positional_only)}), but everything is "
            "passed by name; drop the `/`."
        )
    for name in spec.kwargs:
        if name in _RESERVED:
            yield f"{key}.kwargs.{name}", f"'{name}' is filled in by the trainer; remove it from kwargs."
        elif name not in by_keyword and not takes_any:
            near = difflib.get_close_matches(name, sorted(by_keyword - {"prompts", "completions"}), n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'?" if near else "add the parameter (or **kwargs) or remove the kwarg."
            yield f"{key}.kwargs.{name}", f"'{spec.function}' does not take '{name}'; {hint}"


# ----------------------------------------------------------------------------------------------------------------------
# Kwargs of built-ins: names and types from the signature, ranges below


def _builtin_kwargs(name: str, given: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(kwargs typed for the call, problems as (".key", message)) for built-in `name`."""
    fn = BUILTINS[name]
    hints = typing.get_type_hints(fn)
    declared = {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    clean, problems = {}, []
    for key, value in given.items():
        if key not in declared:
            near = difflib.get_close_matches(str(key), list(declared), n=1, cutoff=0.6)
            hint = f"did you mean '{near[0]}'?" if near else f"{name} takes: {', '.join(declared) or 'no kwargs'}."
            problems.append((f".{key}", f"unknown kwarg of built-in '{name}'; {hint}"))
            continue
        ok, typed = _coerce(value, hints[key])
        if ok:
            clean[key] = typed
        else:
            problems.append((f".{key}", f"{value!r} is not valid for {name}; expected {_describe(hints[key])}."))
    for key, p in declared.items():
        if p.default is p.empty and key not in given:
            problems.append((f".{key}", f"built-in '{name}' needs kwargs.{key} ({_describe(hints[key])})."))
    if not problems:
        full = {k: p.default for k, p in declared.items() if p.default is not p.empty} | clean
        problems = [(f".{k}" if k else "", m) for k, m in _RANGES.get(name, lambda kw: [])(full)]
    return clean, problems


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return True, None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            return False, None
        return True, list(items)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            return False, None
        return True, {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return False, None
        try:
            out = float(value)  # YAML 1.1 reads `1e-6` as a string
        except ValueError:
            return False, None
        return math.isfinite(out), out
    if hint is str:
        return isinstance(value, str), value
    return True, value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return f"{_describe(inner)} or null"
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list of strings, e.g. [think, answer]"
    if origin is dict:
        return "a mapping of names to strings"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(hint, str(hint))


def _format_ranges(kw: dict) -> list[tuple[str, str]]:
    out = []
    if kw["regex"] is None and not kw["tags"]:
        out.append(("", "built-in 'format' needs kwargs.regex (a Python regex) and/or kwargs.tags (e.g. [answer])."))
    if kw["regex"] is not None:
        try:
            re.compile(kw["regex"])
        except re.error as e:
            out.append(("regex", f"{kw['regex']!r} is not a valid Python regex ({e}); fix the pattern."))
    elif kw["fullmatch"]:
        out.append(("fullmatch", "true without kwargs.regex has nothing to match; add a regex or remove it."))
    out += [("tags", f"{t!r} is not a tag name; write names such as answer or think.")
            for t in kw["tags"] or [] if not re.fullmatch(r"\s*</?[\w.:-]+>?\s*", t)]
    return out


def _length_ranges(kw: dict) -> list[tuple[str, str]]:
    out = []
    if kw["min_chars"] < 0:
        out.append(("min_chars", f"{kw['min_chars']} must be 0 or more."))
    if kw["max_chars"] is None and kw["min_chars"] <= 0:
        out.append(("", "built-in 'length' needs a band: set kwargs.max_chars and/or kwargs.min_chars."))
    if kw["max_chars"] is not None and kw["max_chars"] < max(kw["min_chars"], 0):
        out.append(("max_chars", f"{kw['max_chars']} is below min_chars ({kw['min_chars']}); widen the band."))
    if kw["penalty"] <= 0:
        out.append(("penalty", f"{kw['penalty']} must be greater than 0, e.g. 0.01 (per character)."))
    return out


def _reward_model_ranges(kw: dict) -> list[tuple[str, str]]:
    out = []
    model = kw["model"].strip()
    looks_local = model.startswith((".", "/", "~")) or model.endswith(("/", "\\"))
    if not model:
        out.append(("model", "is empty; give a local dir or hub id of a sequence-classification reward model."))
    elif looks_local and not Path(model).expanduser().exists():
        out.append(("model", f"'{model}' does not exist; give an existing model dir or a hub id."))
    out += [(k, f"{kw[k]} must be greater than 0.") for k in ("batch_size", "max_length") if kw[k] <= 0]
    return out


def _http_ranges(kw: dict) -> list[tuple[str, str]]:
    out = []
    if not re.match(r"https?://[^/\s]+", kw["url"]):
        out.append(("url", f"{kw['url']!r} is not an http:// or https:// URL, e.g. http://localhost:8000/score."))
    if kw["timeout"] <= 0:
        out.append(("timeout", f"{kw['timeout']} must be greater than 0 (seconds), e.g. 30."))
    if not 0 <= kw["retries"] <= MAX_RETRIES:
        out.append(("retries", f"{kw['retries']} must be in 0..{MAX_RETRIES}."))
    return out


def _judge_ranges(kw: dict) -> list[tuple[str, str]]:
    out = []
    if not re.match(r"https?://[^/\s]+", kw["base_url"]):
        out.append(("base_url", f"{kw['base_url']!r} is not an http:// or https:// URL, e.g. "
                                "http://127.0.0.1:8000/v1 (fai-rl-serve, vLLM)."))
    out += [(k, f"{kw[k]} must be greater than 0.") for k in ("max_score", "max_tokens", "timeout", "concurrency")
            if kw[k] <= 0]
    if not 0 <= kw["retries"] <= MAX_RETRIES:
        out.append(("retries", f"{kw['retries']} must be in 0..{MAX_RETRIES}."))
    if "{completion}" not in kw["template"]:
        out.append(("template", "must contain {completion} (the reply being graded)."))
    return out


_RANGES: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "math_answer": lambda kw: [("tolerance", f"{kw['tolerance']} must be 0 or more.")] if kw["tolerance"] < 0 else [],
    "format": _format_ranges,
    "length": _length_ranges,
    "countdown": lambda kw: [] if 0 <= kw["format_score"] <= 1 else [
        ("format_score", f"{kw['format_score']} must be in [0, 1] (the reward for a wrong but well-formed equation).")
    ],
    "reward_model": _reward_model_ranges,
    "http": _http_ranges,
    "llm_judge": _judge_ranges,
}
