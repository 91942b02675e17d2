"""Load a recipe: YAML file + `key.sub=value` overrides, checked against the schema, all problems reported together.

Precedence is CLI override > recipe file > schema default. The YAML is walked once with line numbers so that every
problem can say `recipe.yaml:12: training.lerning_rate: unknown key; did you mean training.learning_rate?`. After the
walk, omegaconf merges the cleaned tree into the structured schema (resolving `${...}` interpolations) and turns it
into plain dataclasses; the cross-field rules in fai_rl.config.rules run last, on that typed object.

The steps live in modules by what they do: load_tree reads the YAML and applies the overrides, load_check checks the
tree against the schema (fai_rl.config.schema); this module runs them in order, fills in what the schema leaves to the
algorithm or to other keys, and writes a loaded recipe back out (recipe_to_dict, recipe_to_yaml).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fai_rl.algorithms import spec_of
from fai_rl.config.eval_rules import check_eval_rules
from fai_rl.config.fai_rl import resolve_fai_rl_meaning
from fai_rl.config.load_check import _ALL_FIELDS, _BAD, _EVAL_FIELDS, _SECRET_KEY, _check_section, _Ctx
from fai_rl.config.load_tree import _read_yaml, apply_overrides, parse_key_path
from fai_rl.config.ranges import check_value_ranges
from fai_rl.config.rules import check_rules
from fai_rl.config.schema import ALGORITHMS, BACKENDS, EVAL_METRICS, EvalRecipe, Recipe
from fai_rl.config.support import check_key_support, table_key
from fai_rl.errors import RecipeError


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
    # value ranges before "not read by this algorithm": an impossible value is refused as such whatever reads it
    rules = [*check_rules(recipe, processes), *(p for rule in extra_rules for p in rule(recipe)),
             *check_value_ranges(recipe), *unread]
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
