"""Importing what a recipe names as `module:attr` or `path/to/file.py:attr` (reward functions, workflow classes).

Shared by fai_rl.rewards.loader and fai_rl.workflows.loader, so both resolve names the same way: modules are found
relative to the directory you run from (searched last, never shadowing installed ones), files by path, and every
failure is an Unresolved whose message says why and what to write instead. It imports nothing from fai_rl, so any
floor can use it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Unresolved(Exception):
    """A recipe's name points at nothing usable; the message says why and what to write instead."""


def import_named(name: str, forms: str) -> tuple[types.ModuleType, str, str]:
    """(module, module part, attribute part) of `module:attr` or `path/to/file.py:attr`; Unresolved naming `forms`
    when a part is missing or the module does not import. Shared by reward functions and workflow classes."""
    target, _, attr = name.rpartition(":")
    if not target or not attr:
        raise Unresolved(f"'{name}' needs both parts, {forms}.")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    return (_import_file(target) if is_file else _import_module(target)), target, attr


def _import_module(name: str) -> types.ModuleType:
    try:
        with _cwd_on_path():
            return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise Unresolved(
                f"no module named '{name}'; check the spelling, install it, or run from the directory that holds "
                f"{name.split('.')[0]}.py (now {Path.cwd()}); a file path works too: path/to/file.py:function."
            ) from None
        raise Unresolved(_import_failure(f"module '{name}'", e)) from None
    except Exception as e:  # noqa: BLE001 - the user's module ran and raised: report it, whatever it was
        raise Unresolved(_import_failure(f"module '{name}'", e)) from None


_FILE_MODULES: dict[tuple[str, int], types.ModuleType] = {}


def _import_file(target: str) -> types.ModuleType:
    path = Path(target).expanduser()
    full = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not full.is_file():
        raise Unresolved(
            f"no such file '{target}' (looked for {full}); paths are relative to the directory you run from."
        )
    cache_key = (str(full), full.stat().st_mtime_ns)
    if cache_key in _FILE_MODULES:  # check_rewards then build_rewards: run the file once
        return _FILE_MODULES[cache_key]
    stem = re.sub(r"\W", "_", full.stem)
    # the prefix predates workflow classes; kept so a file's module name (pickles, dataclasses) stays the same
    name = f"fai_rl_user_rewards.{stem}_{hashlib.sha1(str(full).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None:  # a suffix no loader knows (.jsonl, .txt): not a module
        raise Unresolved(f"'{target}' is not a Python module (a .py file); point it at path/to/file.py:function.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - SystemExit from a script-style file included
        del sys.modules[name]
        if isinstance(e, KeyboardInterrupt):
            raise
        raise Unresolved(_import_failure(f"'{target}'", e)) from None
    _FILE_MODULES[cache_key] = module
    return module


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let `module:function` find modules in the current directory (last, so they never shadow installed ones)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_failure(what: str, e: BaseException) -> str:
    import traceback

    if isinstance(e, SyntaxError) and not e.filename:  # compile() refused the bytes themselves (NUL, bad encoding)
        return f"{what} is not a Python source file ({e.msg}); point it at a .py file of Python text."
    if isinstance(e, SyntaxError):  # the file's own line, not importlib's frame that compiled it
        return f"importing {what} raised SyntaxError at {e.filename}:{e.lineno}: {e.msg}; fix that line."
    frames = traceback.extract_tb(e.__traceback__)
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"importing {what} raised {type(e).__name__}: {e}{at}; fix that file so it imports."
