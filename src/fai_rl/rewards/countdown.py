"""The Countdown reward: reach a target by combining given numbers with + - * / (TinyZero's task).

The model's equation is evaluated without `eval`: it is parsed with `ast` and only integer literals, the four
operations, unary minus and parentheses are accepted; everything else (names, calls, attributes, `**`, floats) makes
the equation malformed. Arithmetic is exact (fractions), so `7 / 3 * 3` is 7, and the input length is capped, so no
equation can take long to evaluate.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from fai_rl.rewards.text import column_values

MAX_EQUATION_CHARS = 200
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_RLLM_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>")  # rLLM's extract_solution: one line, case-sensitive
_EQUATION_RUN = re.compile(r"[\d\s+\-*/()=]*\d[\d\s+\-*/()=]*")
_TRAILING_RESULT = re.compile(r"=\s*-?\d+(?:\.\d+)?\s*$")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate_equation(expression: str) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals used in order) of an arithmetic expression; ValueError when it is not one.

    Accepts only int literals, + - * /, unary minus and parentheses, at most MAX_EQUATION_CHARS characters.
    """
    if len(expression) > MAX_EQUATION_CHARS:
        raise ValueError(f"longer than {MAX_EQUATION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not an arithmetic expression ({type(e).__name__})") from None
    used: list[int] = []
    return _evaluate(tree.body, used), used


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, float, str
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, used)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if right == 0:
            raise ValueError("division by zero")
        return left / right
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    raise ValueError(f"{type(node).__name__} is not allowed (only integers, + - * /, unary minus, parentheses)")


def extract_equation(completion: str, answer_tags: bool = False) -> str | None:
    """The equation a completion answers with: the content of its last <answer>...</answer>, else the last run of
    digits and operators on the last line that has a digit; a trailing `= result` is dropped. answer_tags: rLLM's
    parsing, the last one-line <answer>...</answer> as written, None without one."""
    if answer_tags:
        tags = _RLLM_ANSWER_TAG.findall(completion)
        return tags[-1].strip() or None if tags else None
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        text = tags[-1].strip()
    else:
        lines = [line for line in completion.splitlines() if any(ch.isdigit() for ch in line)]
        runs = _EQUATION_RUN.findall(lines[-1].replace("×", "*").replace("÷", "/")) if lines else []
        if not runs:
            return None
        text = runs[-1].strip()
    text = text.replace("×", "*").replace("÷", "/").rstrip(". ")
    text = _TRAILING_RESULT.sub("", text).strip()
    return text or None


def countdown(
    completions: list[str],
    *,
    use_all: bool = True,
    format_score: float = 0.1,
    answer_tags: bool = False,
    numbers_column: str = "numbers",
    target_column: str = "target",
    **columns,
) -> list[float]:
    """1.0 when the equation uses the row's numbers correctly and equals its target; format_score when it is a
    well-formed equation that misses; 0.0 when there is no equation or it is not plain arithmetic.

    kwargs: use_all (bool, default true): every number exactly once (false: each at most once);
    format_score (float in [0, 1], default 0.1); answer_tags (bool, default false): only the last one-line
    <answer>...</answer>, as written, counts (rLLM's parsing; with format_score 0 rLLM's countdown_reward_fn); numbers_column (default "numbers": a list of integers per row);
    target_column (default "target": an integer per row).
    """
    numbers = column_values(columns, numbers_column, len(completions), "numbers_column")
    targets = column_values(columns, target_column, len(completions), "target_column")
    out = []
    for completion, row_numbers, target in zip(completions, numbers, targets):
        allowed, goal = _row_numbers(row_numbers, numbers_column), _row_target(target, target_column)
        equation = extract_equation(completion, answer_tags)
        try:
            value, used = evaluate_equation(equation) if equation else (None, None)
        except ValueError:
            value, used = None, None
        if value is None:
            out.append(0.0)
            continue
        counts, have = Counter(used), Counter(allowed)
        fair = counts == have if use_all else not (counts - have)
        out.append(1.0 if fair and value == goal else format_score)
    return out


def _row_numbers(value: object, column: str) -> list[int]:
    if isinstance(value, str):  # "[3, 5, 7]" or "3 5 7" from a CSV
        value = re.findall(r"-?\d+", value)
    try:
        return [int(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"column '{column}' must hold a list of integers per row, got {value!r}") from None


def _row_target(value: object, column: str) -> Fraction:
    try:
        return Fraction(str(value).strip())
    except (TypeError, ValueError):
        raise ValueError(f"column '{column}' must hold a number per row, got {value!r}") from None
