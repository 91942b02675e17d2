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
    "fai-rl/digits": (
        "single-digit 'What is a + b?' / 'What is a - b?' problems (operands 0..9, answers 0..18), the easy RL task "
        "that fai-rl/tiny-sft starts from; columns prompt, answer; splits train (115 rows), test (40 rows)"
    ),
    "fai-rl/digits-pairs": (
        "preference pairs over fai-rl/digits: chosen = the right answer, rejected = each near miss in turn (units digit "
        "off by 1 or 2, tens digit kept); columns prompt, chosen, rejected, answer; splits train (396 rows), test "
        "(131 rows), over the same problems as the fai-rl/digits splits"
    ),
    "fai-rl/countdown": (
        "Countdown problems: reach a target (1..100) from 3 or 4 numbers (1..25) with + - * /, each number exactly "
        "once; columns prompt, numbers, target, answer (a reference expression); splits train (2000 rows), test (200 rows)"
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


def _split_range(task: str, splits: dict[str, tuple[int, int]], split: str) -> tuple[int, int]:
    """The (start, stop) of `split`, or a DataError naming the splits there are."""
    if split not in splits:
        raise DataError(f"builtin task {task!r} has no split {split!r}; available splits: {', '.join(splits)}")
    return splits[split]


# ---------------------------------------------------------------- fai-rl/digits and fai-rl/digits-pairs

_DIGITS_SEED = 4321
# split -> (start, stop) in the seeded order of the 155 problems: test is the first 40, train the other 115.
_DIGITS_SPLITS: dict[str, tuple[int, int]] = {"train": (40, 155), "test": (0, 40)}


def near_misses(answer: int) -> list[int]:
    """The wrong answers a digits model most often gives: the units digit moved by 1 or 2, the tens digit kept.

    `fai-rl/digits-pairs` draws its rejected answers from these, and `fai-rl/tiny-sft` is trained to spread part of
    its probability over them.
    """
    tens, units = divmod(answer, 10)
    return [10 * tens + units + d for d in (-2, -1, 1, 2) if 0 <= units + d <= 9]


def _digits_problems() -> list[tuple[int, str, int]]:
    """All 155 single-digit problems (100 additions, 55 subtractions with a >= b), in a fixed seeded order."""
    r = range(10)
    problems = [(a, "+", b) for a in r for b in r] + [(a, "-", b) for a in r for b in r if a >= b]
    random.Random(_DIGITS_SEED).shuffle(problems)
    return problems


def _digits_rows(task: str, split: str) -> list[tuple[str, int]]:
    """(prompt, answer) for each problem of the split."""
    start, stop = _split_range(task, _DIGITS_SPLITS, split)
    return [
        (f"What is {a} {op} {b}?", a + b if op == "+" else a - b)
        for i, (a, op, b) in enumerate(_digits_problems())
        if start <= i < stop
    ]


def _digits(split: str) -> list[dict]:
    return [{"prompt": prompt, "answer": str(answer)} for prompt, answer in _digits_rows("fai-rl/digits", split)]


def _digits_pairs(split: str) -> list[dict]:
    """One pair per near miss: the policy must prefer the right answer over every wrong answer it is likely to give."""
    return [
        {"prompt": prompt, "chosen": str(answer), "rejected": str(wrong), "answer": str(answer)}
        for prompt, answer in _digits_rows("fai-rl/digits-pairs", split)
        for wrong in near_misses(answer)
    ]


# ---------------------------------------------------------------- fai-rl/countdown

_COUNTDOWN_SEED = 2025
_COUNTDOWN_MAX_NUMBER = 25
_COUNTDOWN_MAX_TARGET = 100
_COUNTDOWN_SPLITS: dict[str, tuple[int, int]] = {"train": (0, 2000), "test": (2000, 2200)}
_COUNTDOWN_PROMPT = (
    "Using the numbers {numbers}, write an arithmetic expression that equals {target}. You may use +, -, * and /, "
    "and each number exactly once. Answer with the expression only, for example (1 + 2) * 3."
)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def _countdown_instance(rng: random.Random) -> tuple[list[int], int, str] | None:
    """Numbers, target and a reference expression using every number once; None for a draw that does not qualify.

    The expression is built by combining two random items of the pool with a random operation until one is left, so
    every tree shape occurs. Intermediate values stay positive integers: '-' only takes the larger minus the smaller,
    '/' only divides exactly and never by 1.
    """
    numbers = [rng.randint(1, _COUNTDOWN_MAX_NUMBER) for _ in range(rng.choice((3, 4)))]
    pool = [(n, str(n), 3) for n in numbers]  # (value, text, precedence of the text's top operation; 3 = atom)
    while len(pool) > 1:
        x, y = rng.sample(range(len(pool)), 2)
        (va, ta, pa), (vb, tb, pb) = pool[x], pool[y]
        pool = [item for i, item in enumerate(pool) if i not in (x, y)]
        op = rng.choice("+-*/")
        if op in "-/" and va < vb:
            (va, ta, pa), (vb, tb, pb) = (vb, tb, pb), (va, ta, pa)
        if op == "-" and va == vb or op == "/" and (vb == 1 or va % vb):
            return None
        value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va // vb}[op]
        prec = _PRECEDENCE[op]
        left = f"({ta})" if pa < prec else ta
        right = f"({tb})" if pb < prec or (pb == prec and op in "-/") else tb
        pool.append((value, f"{left} {op} {right}", prec))
    value, text, _ = pool[0]
    if not 1 <= value <= _COUNTDOWN_MAX_TARGET or value in numbers:
        return None  # out of range, or trivial (the target is one of the numbers)
    return numbers, value, text


def _countdown_instances() -> list[tuple[list[int], int, str]]:
    """2200 distinct instances (by multiset of numbers and target) in a fixed seeded order."""
    rng = random.Random(_COUNTDOWN_SEED)
    stop = max(end for _, end in _COUNTDOWN_SPLITS.values())
    seen: set[tuple[tuple[int, ...], int]] = set()
    out = []
    while len(out) < stop:
        instance = _countdown_instance(rng)
        if instance is None:
            continue
        key = (tuple(sorted(instance[0])), instance[1])
        if key not in seen:
            seen.add(key)
            out.append(instance)
    return out


def _countdown(split: str) -> list[dict]:
    start, stop = _split_range("fai-rl/countdown", _COUNTDOWN_SPLITS, split)
    return [
        {
            "prompt": _COUNTDOWN_PROMPT.format(numbers=", ".join(map(str, numbers)), target=target),
            "numbers": list(numbers),
            "target": target,
            "answer": expression,
        }
        for numbers, target, expression in _countdown_instances()[start:stop]
    ]


_LOADERS = {
    "fai-rl/arithmetic": _arithmetic,
    "fai-rl/digits": _digits,
    "fai-rl/digits-pairs": _digits_pairs,
    "fai-rl/countdown": _countdown,
}


def load_builtin_task(name: str, split: str) -> list[dict]:
    """Rows of split `split` of builtin task `name`, freshly built (callers may mutate them)."""
    if not is_builtin_task(name):
        raise DataError(f"unknown builtin task {name!r}; available builtin tasks: {', '.join(sorted(BUILTIN_TASKS))}")
    return _LOADERS[name](split)
