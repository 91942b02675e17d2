"""The recipe as a plain tree, before it is typed: the YAML read with each key's line, and `key.sub=value` overrides.

fai_rl.config.load checks the tree against the schema (fai_rl.config.load_check), so every problem found there can
name `recipe.yaml:12` or `command line`, whichever wrote the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fai_rl.errors import RecipeError
from fai_rl.paths import read_utf8_text

COMMAND_LINE = "command line"
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


# ----------------------------------------------------------------------------------------------------------------------
# Reading the YAML with line numbers


def _read_yaml(path: Path) -> tuple[dict, dict[str, int], list[str]]:
    """Parse a recipe file; return (tree, dotted-key -> line, problems found while reading)."""
    if not path.is_file():
        raise RecipeError(f"--recipe: no such file: {path}; pass the path of a recipe YAML (see recipes/).")
    text = _read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = yaml.safe_load(text)
    except RecursionError:  # nesting thousands deep: PyYAML's composer recurses per level
        raise RecipeError(f"{path}: nested too deeply to be a recipe; fix the file.") from None
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


def _read_text(path: Path) -> str:
    """The recipe's text: UTF-8 (a BOM allowed); a binary or otherwise encoded file is named with the line of its first
    bad byte."""
    try:
        return read_utf8_text(path, RecipeError, "a recipe is a UTF-8 YAML text file")
    except OSError as e:
        raise RecipeError(f"--recipe: cannot read {path} ({e.strerror or e}).") from None


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
