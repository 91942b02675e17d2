"""Built-in synthetic tasks: datasets generated in-process, with no download.

`fai-rl/arithmetic` asks for one addition or subtraction of two integers in 0..49, written with ASCII '+' and '-'.
Subtraction is only posed when the result is non-negative (a >= b), so every answer is a plain integer 0..98 of one
or two digits; small enough that the ~0.8M-parameter `fai-rl/tiny` model learns the format and much of the
arithmetic in under a minute of CPU training.

Rows are `{"prompt": "What is 23 + 18?", "answer": "41"}`. The 3775 distinct problems (2500 additions, 1275
subtractions) are shuffled once with a fixed seed; `train` is the first 2000 and `test` the next 200, so the splits
are deterministic and never share a problem.
"""

from __future__ import annotations

import random

from fai_rl.errors import DataError

BUILTIN_TASKS: dict[str, str] = {
    "fai-rl/arithmetic": (
        "synthetic 'What is a + b?' / 'What is a - b?' problems (operands 0..49, non-negative results); "
        "columns prompt, answer; splits train (2000 rows), test (200 rows)"
    ),
}

_ARITH_MAX_OPERAND = 49
_ARITH_SEED = 1234
# split -> (start, stop) in the shuffled problem list; the ranges do not overlap, which makes the splits disjoint.
_ARITH_SPLITS: dict[str, tuple[int, int]] = {"train": (0, 2000), "test": (2000, 2200)}


def is_builtin_task(name: str) -> bool:
    """True if `name` is one of BUILTIN_TASKS."""
    return name in BUILTIN_TASKS


def _arithmetic_problems() -> list[tuple[int, str, int]]:
    """Every (a, op, b) of the task, in a fixed seeded order."""
    r = range(_ARITH_MAX_OPERAND + 1)
    problems = [(a, "+", b) for a in r for b in r] + [(a, "-", b) for a in r for b in r if a >= b]
    random.Random(_ARITH_SEED).shuffle(problems)  # seeded shuffle: same order on every run and platform
    return problems


def _arithmetic(split: str) -> list[dict]:
    if split not in _ARITH_SPLITS:
        raise DataError(
            f"builtin task 'fai-rl/arithmetic' has no split {split!r}; available splits: {', '.join(_ARITH_SPLITS)}"
        )
    start, stop = _ARITH_SPLITS[split]
    return [
        {"prompt": f"What is {a} {op} {b}?", "answer": str(a + b if op == "+" else a - b)}
        for a, op, b in _arithmetic_problems()[start:stop]
    ]


_LOADERS = {"fai-rl/arithmetic": _arithmetic}


def load_builtin_task(name: str, split: str) -> list[dict]:
    """Rows of split `split` of builtin task `name`, freshly built (callers may mutate them)."""
    if not is_builtin_task(name):
        raise DataError(f"unknown builtin task {name!r}; available builtin tasks: {', '.join(sorted(BUILTIN_TASKS))}")
    return _LOADERS[name](split)
