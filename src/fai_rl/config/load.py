"""Load a recipe: YAML file + `key.sub=value` overrides, checked against the schema, all problems reported together.

Precedence is CLI override > recipe file > schema default. The YAML is walked once with line numbers so that every
problem can say `recipe.yaml:12: training.lerning_rate: unknown key; did you mean training.learning_rate?`. After the
walk, omegaconf merges the cleaned tree into the structured schema (resolving `${...}` interpolations) and turns it
into plain dataclasses; the cross-field rules in fai_rl.config.rules run last, on that typed object.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fai_rl.algorithms import spec_of
from fai_rl.config.fai_rl import resolve_fai_rl_meaning
from fai_rl.config.eval_rules import check_eval_rules
from fai_rl.config.rules import check_rules
from fai_rl.config.schema import ALGORITHMS, BACKENDS, EVAL_METRICS, EvalRecipe, Recipe
from fai_rl.config.support import FAI_RL_VLM_KEYS, check_key_support, table_key
from fai_rl.errors import RecipeError

COMMAND_LINE = "command line"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


# ----------------------------------------------------------------------------------------------------------------------
# Reading the YAML with line numbers


def _read_yaml(path: Path) -> tuple[dict, dict[str, int], list[str]]:
    """Parse a recipe file; return (tree, dotted-key -> line, problems found while reading)."""
    if not path.is_file():
        raise RecipeError(f"--recipe: no such file: {path}; pass the path of a recipe YAML (see recipes/).")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"{where}: not valid YAML ({problem}); fix the syntax at that line.") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}:1: a recipe must be a mapping with sections model, data, training, ...")
    lines: dict[str, int] = {}
    problems: list[str] = []
    _walk_node(root, "", lines, problems, path)
    return tree, lines, problems


def _walk_node(node: Any, prefix: str, lines: dict[str, int], problems: list[str], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    f"{path}:{line}: {dotted}: key appears twice (first at line {seen[key]}); keep one of them."
                )
            seen[key] = line
            lines[dotted] = line
            _walk_node(value_node, dotted, lines, problems, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = f"{prefix}[{i}]"
            lines[dotted] = item.start_mark.line + 1
            _walk_node(item, dotted, lines, problems, path)


# ----------------------------------------------------------------------------------------------------------------------
# Overrides


def parse_key_path(key: str) -> list[str | int]:
    """`data.datasets[0].name` -> ["data", "datasets", 0, "name"]; raises ValueError on a malformed path."""
    parts: list[str | int] = []
    for chunk in key.split("."):
        m = _PATH_PART.fullmatch(chunk)
        if not m:
            raise ValueError(chunk)
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def format_key_path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def apply_overrides(tree: dict, overrides: list[str]) -> tuple[set[str], list[str]]:
    """Apply `a.b=c` overrides in place (values typed as YAML). Returns (dotted keys set, problems)."""
    touched: set[str] = set()
    problems: list[str] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(
                f"{COMMAND_LINE}: '{item}': an override must look like key.sub=value, e.g. training.learning_rate=1e-4."
            )
            continue
        try:
            parts = parse_key_path(key)
        except ValueError:
            problems.append(
                f"{COMMAND_LINE}: {key}: not a valid key path; use dotted names with list indices, "
                "e.g. data.datasets[0].name=my/data."
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. an unbalanced bracket): keep the text; the schema check judges it
        problem = _set_path(tree, parts, value)
        if problem:
            problems.append(f"{COMMAND_LINE}: {problem}")
        else:
            touched.add(format_key_path(parts))
    return touched, problems


def _set_path(tree: dict, parts: list[str | int], value: Any) -> str | None:
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = format_key_path(parts[: i + 1])
        nxt: Any = value if last else ({} if isinstance(parts[i + 1], str) else [])
        if isinstance(part, int):
            if not isinstance(node, list):
                return f"{here}: {format_key_path(parts[:i]) or 'this key'} is not a list; drop the [{part}]."
            if part > len(node):
                return (
                    f"{here}: index {part} is past the end (the list has {len(node)} entries); "
                    f"use index {len(node)} to append."
                )
            if part == len(node):
                node.append(nxt)
            elif last:
                node[part] = value
            elif not isinstance(node[part], (dict, list)):
                node[part] = nxt
            node = node[part]
        else:
            if not isinstance(node, dict):
                return f"{here}: {format_key_path(parts[:i])} holds a value, not a section; remove .{part}."
            if last:
                node[part] = value
            elif not isinstance(node.get(part), (dict, list)):
                node[part] = nxt
            node = node[part]
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Schema check


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


# ----------------------------------------------------------------------------------------------------------------------
# Public API


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    extra_rules: list[typing.Callable[[Recipe], list[tuple[str, str]]]] = (),
    processes: int = 1,
) -> Recipe:
    """Read, override, check and type a recipe; raises RecipeError listing every problem at once.

    `extra_rules` come from upper layers (e.g. which (backend, algorithm) pairs exist) and report like the others.
    `processes` is the world size the launch asks for (batch shapes that must divide across processes).
    What was accepted but changes nothing (FAI-RL keys this run does not read, FAI-RL meanings filled in) is returned
    as notes: `recipe_notes(recipe)`.
    """
    recipe, ctx = _load_typed(Path(path), overrides, Recipe, _ALL_FIELDS, accept_fai_rl_vlm=True)
    given = _given_values(recipe, ctx)
    unread: list[tuple[str, str]] = []
    meanings = resolve_fai_rl_meaning(recipe, set(given))  # first: whether a key is read can depend on them
    if recipe.training.algorithm in ALGORITHMS and recipe.training.backend in BACKENDS:  # else: already reported
        unread, support_notes = check_key_support(recipe, given, _DEFAULTS)
        ctx.notes += support_notes
    ctx.notes += meanings
    for key, value in spec_of(recipe.training.algorithm).defaults.items():
        if getattr(recipe.training, key) is None:  # null means "the algorithm's default": make it explicit
            setattr(recipe.training, key, value)
    if recipe.training.metric_for_best_model and recipe.training.greater_is_better is None:
        recipe.training.greater_is_better = not recipe.training.metric_for_best_model.endswith("loss")
    # specific rules first: where one covers a key (e.g. rewards in a DPO recipe) its message is the better one
    rules = [*check_rules(recipe, processes), *(p for rule in extra_rules for p in rule(recipe)), *unread]
    recipe = _finish(recipe, ctx, rules)
    _fill_derived(recipe)
    recipe.__dict__["_notes"] = list(ctx.notes)  # not a schema field: never validated, dumped or documented
    return recipe


def _fill_derived(r: Recipe) -> None:
    """Values that were nulls meaning "the same as another key", made explicit once the rules have passed (so their
    messages still blame the key the user wrote), so that recipe.resolved.yaml records what runs and no trainer
    falls back on its own: epsilon_high (= epsilon), num_generations_eval (= num_generations for group-sampling
    algorithms, 1 for PPO) and, on Tinker, tinker.save_every (= training.save_steps)."""
    t, s = r.training, spec_of(r.training.algorithm)
    if s.samples_groups and t.epsilon_high is None:
        t.epsilon_high = t.epsilon
    if (s.samples_groups or s.rollout_loop) and t.num_generations_eval is None:
        t.num_generations_eval = t.num_generations if s.samples_groups else 1
    if t.backend == "tinker" and r.tinker.save_every is None:
        r.tinker.save_every = t.save_steps


def recipe_notes(recipe: Recipe) -> list[str]:
    """One line per thing the loader accepted that changes nothing, or filled in with FAI-RL's meaning."""
    return list(recipe.__dict__.get("_notes", []))


def _given_values(recipe: Recipe, ctx: _Ctx) -> dict[str, Any]:
    """The keys the recipe file or the command line wrote, with their typed values (list items as name[i].key)."""
    given: dict[str, Any] = {}
    for dotted in [*ctx.lines, *ctx.overridden]:
        if dotted in ctx.reported:
            continue
        node: Any = recipe
        for part in parse_key_path(dotted):
            if isinstance(part, int):
                node = node[part] if isinstance(node, list) and part < len(node) else _BAD
            elif dataclasses.is_dataclass(node):
                node = getattr(node, part, _BAD)
            elif isinstance(node, dict):
                node = node.get(part, _BAD)
            else:
                node = _BAD
            if node is _BAD:
                break
        if node is not _BAD:
            given[dotted] = node
    return given


def _schema_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """table key -> schema default (MISSING for required keys), over the whole training-recipe schema."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}.{f.name}" if prefix else f.name, hints[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint):
            out.update(_schema_defaults(hint, key))
            continue
        if inner is not None and dataclasses.is_dataclass(inner):
            out.update(_schema_defaults(inner, f"{key}[]"))
        out[key] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


_DEFAULTS = _schema_defaults(Recipe)


def load_eval_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    extra_rules: list[typing.Callable[[EvalRecipe], list[tuple[str, str]]]] = (),
) -> EvalRecipe:
    """load_recipe for fai-rl-eval's recipes (schema EvalRecipe): same YAML, overrides, errors and exit code."""
    recipe, ctx = _load_typed(Path(path), overrides, EvalRecipe, _EVAL_FIELDS)
    for task in recipe.evaluation.tasks:  # empty means "the type's default": make it explicit
        if not task.metrics and not (task.type == "generate" and task.rewards):
            task.metrics = [EVAL_METRICS.get(task.type, ("exact_match",))[0]]
        if not task.pass_k:
            task.pass_k = sorted({1, task.num_samples}) if task.num_samples >= 1 else [1]
    problems = [*check_eval_rules(recipe, load_recipe), *(p for rule in extra_rules for p in rule(recipe))]
    return _finish(recipe, ctx, problems)


def _load_typed(path: Path, overrides: list[str] | None, schema: type, all_fields: dict[str, str],
                accept_fai_rl_vlm: bool = False) -> tuple[Any, _Ctx]:
    """Read, override and schema-check a recipe file into `schema`; problems so far are kept in the returned ctx."""
    tree, lines, problems = _read_yaml(path)
    overridden, override_problems = apply_overrides(tree, list(overrides or []))
    ctx = _Ctx(str(path), lines, overridden, problems + override_problems, all_fields=all_fields,
               accept_fai_rl_vlm=accept_fai_rl_vlm)
    cleaned = _check_section(tree, schema, "", ctx)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cleaned or {})
        if ctx.problems:  # still run the cross-field rules, on placeholders for what is missing, to report all at once
            _fill_missing(merged)
        return OmegaConf.to_object(merged), ctx
    except OmegaConfBaseException as e:  # an interpolation that does not resolve, or resolves to the wrong type
        if ctx.problems:
            raise RecipeError(ctx.problems) from None
        key = getattr(e, "full_key", None) or "?"
        raise RecipeError(
            f"{ctx.where(key)}: {key}: {getattr(e, 'msg', e)}; fix the value or the ${{...}} it uses."
        ) from None


def _finish(recipe: Any, ctx: _Ctx, rule_problems: list[tuple[str, str]]) -> Any:
    """Add the rules' problems (not those under a key already reported) and raise them all, or return the recipe."""
    for key, msg in rule_problems:  # the first problem of a key wins: a key is reported once
        if not any(key == k or key.startswith((k + ".", k + "[")) for k in ctx.reported):
            ctx.add(key, msg)
    if ctx.problems:
        raise RecipeError(ctx.problems)
    return recipe


def _fill_missing(cfg: Any) -> None:
    for key in OmegaConf.missing_keys(cfg):
        for placeholder in ("", []):
            try:
                OmegaConf.update(cfg, key, placeholder, force_add=True)
                break
            except OmegaConfBaseException:
                continue


def redact(tree: Any) -> Any:
    """A copy of a plain tree with every secret-looking value replaced by '***'."""
    if isinstance(tree, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v else redact(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def recipe_to_dict(recipe: Recipe | EvalRecipe) -> dict:
    """The resolved recipe as a plain dict, secrets removed; for a training recipe only the keys this run reads
    (the key-support table decides), so it says what runs and loads again as the same run."""
    tree = dataclasses.asdict(recipe)
    if isinstance(recipe, Recipe) and recipe.training.algorithm in ALGORITHMS and recipe.training.backend in BACKENDS:
        tree = _only_read(tree, recipe, "")
    return redact(tree)


def _only_read(node: Any, recipe: Recipe, dotted: str) -> Any:
    from fai_rl.config.support import support_of, why_unread

    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = f"{dotted}.{key}" if dotted else key
            if support_of(table_key(sub)) is not None and why_unread(sub, recipe) is not None:
                continue
            out[key] = _only_read(value, recipe, sub) if support_of(table_key(sub)) is None or isinstance(value, list) \
                else value
        return out
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return [_only_read(v, recipe, f"{dotted}[{i}]") for i, v in enumerate(node)]
    return node


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, secrets removed (what goes into output_dir/recipe.resolved.yaml)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)
