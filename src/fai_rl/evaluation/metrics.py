"""Metrics of fai-rl-eval: per-sample scores and the unbiased pass@k estimator.

pass@k follows Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1): with n samples of a
prompt of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), the chance that k of the n samples drawn without
replacement include a correct one; averaged over prompts. The estimator itself is fai_rl.stats.pass_at_k, shared with
the workflows' eval metrics. pass@1 is then c/n: the mean correctness of all samples.

exact_match and numeric call the built-in rewards of the same name (fai_rl.rewards.text), so a metric here and a
reward in training judge an answer the same way.
"""

from __future__ import annotations

import re

from fai_rl.rewards.text import exact_match, math_answer
from fai_rl.stats import pass_at_k

# Metric name in a recipe -> what scores one completion against a reference (1.0 right, 0.0 wrong).
GENERATE_METRICS = ("exact_match", "numeric")
MULTIPLE_CHOICE_METRICS = ("accuracy",)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """pass@k averaged over prompts; `counts` holds (n, c) per prompt."""
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def score_generations(metric: str, completions: list[str], references: list, tolerance: float) -> list[float]:
    """One score per completion against its reference (same order) for a built-in generate metric."""
    if metric == "exact_match":
        return exact_match(completions, answer=references)
    if metric == "numeric":
        return math_answer(completions, tolerance=tolerance, answer=references)
    raise ValueError(f"unknown metric {metric!r}")


def choice_index(answer, choices: list[str]) -> int | None:
    """The index of the right choice from an answer column: an index (0-based int), a letter (A, b, '(C)'), or the
    text of a choice; None when it names none of them."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    text = str(answer).strip()
    if text in choices:
        return choices.index(text)
    letter = text.strip("().: ").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    return None


_LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")


def parse_letter(text: str, n_choices: int) -> int | None:
    """The choice a generated reply names: the first standalone capital letter among the first n_choices (`B`,
    `(B)`, `B.`, `The answer is B`), else None."""
    for m in _LETTER.finditer(text):
        index = LETTERS.index(m.group(1))
        if index < n_choices:
            return index
    return None


def format_choices(question: str, choices: list[str]) -> str:
    """The question with its choices lettered, for multiple choice answered by a generated letter."""
    lines = [question.rstrip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))]
    return "\n".join(lines) + "\nAnswer with the letter of the correct choice."
