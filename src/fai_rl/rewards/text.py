"""Built-in rewards that read only the completion text (and a reference column): exact_match, math_answer, format,
length. Each takes its recipe kwargs as keyword-only parameters; their annotations and defaults are what
`check_rewards` validates a recipe's `kwargs` against, so the signature is the documentation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from fai_rl.rewards.function import RewardError

# A number as people write it: optional sign (not when glued to a preceding word or digit, so "5-3" is 5 and 3),
# thousands separators, decimals. A simple fraction a/b is tried first.
_SIGN = r"(?:(?<![\w.)\]])[-\u2212])?"
_NUMBER = rf"{_SIGN}(?:\d{{1,3}}(?:,\d{{3}})+(?!\d)|\d+)(?:\.\d+)?|{_SIGN}\.\d+"
_TOKEN = re.compile(rf"(?P<num>{_SIGN}\d+)\s*/\s*(?P<den>\d+)(?![\d.])|(?P<value>{_NUMBER})")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def column_values(columns: dict, name: str, n: int, kwarg: str) -> list:
    """The data column `name` (one value per completion), or a RewardError saying which kwarg renames it."""
    if name not in columns:
        have = ", ".join(sorted(k for k in columns if k != "prompts")) or "none"
        raise RewardError(
            f"needs the data column '{name}', which this data does not have (columns: {have}); set the reward's "
            f"kwargs.{kwarg} to the column that holds it."
        )
    values = columns[name]
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise RewardError(f"column '{name}' must hold one value per completion ({n}), got {type(values).__name__}.")
    return list(values)


# ----------------------------------------------------------------------------------------------------------------------
# exact_match


def normalize_text(text: object) -> str:
    """Casefolded, whitespace collapsed, outer spaces and one trailing period removed."""
    out = " ".join(str(text).split()).casefold()
    return out[:-1].rstrip() if out.endswith(".") else out


def exact_match(completions: list[str], *, column: str = "answer", **columns) -> list[float]:
    """1.0 when the completion equals the row's `column` after normalize_text (case, spaces, a final '.'), else 0.0.

    kwargs: column (str, default "answer"): the data column holding the reference answer.
    """
    refs = column_values(columns, column, len(completions), "column")
    return [float(ref is not None and normalize_text(c) == normalize_text(ref)) for c, ref in zip(completions, refs)]


# ----------------------------------------------------------------------------------------------------------------------
# math_answer


def extract_final_number(text: object) -> float | None:
    """The final numeric answer of a solution, or None.

    Priority: the first number after the last `####` (GSM8K), else the last number inside the last `\\boxed{...}`,
    else inside the last `<answer>...</answer>`, else the last number in the text. A completion that marks its
    answer is judged on that mark only. Understands thousands separators (1,000), signs, decimals, simple fractions
    (3/4, \\frac{3}{4}) and ignores `$`, `\\%` and LaTeX spacing. Numbers pass through as floats.
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text)
    if "####" in text:
        return _number_in(text.rsplit("####", 1)[1], last=False)
    boxed = _last_boxed(text)
    if boxed is not None:
        return _number_in(boxed)
    tags = _ANSWER_TAG.findall(text)
    return _number_in(tags[-1] if tags else text)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces matched; None when absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _number_in(region: str, last: bool = True) -> float | None:
    region = _LATEX_FRAC.sub(lambda m: f"{m[1].strip()}/{m[2].strip()}", region)
    region = re.sub(r"\\[!,;: ]|\\%|\$|\\left|\\right|[()]", " ", region)
    matches = list(_TOKEN.finditer(region))
    if not matches:
        return None
    m = matches[-1] if last else matches[0]
    if m["value"] is not None:
        return float(m["value"].replace(",", "").replace("\u2212", "-"))
    den = int(m["den"])
    return float(Fraction(int(m["num"].replace("\u2212", "-")), den)) if den else None


def math_answer(completions: list[str], *, tolerance: float = 1e-6, column: str = "answer", **columns) -> list[float]:
    """1.0 when the completion's final number equals the reference's within `tolerance`, else 0.0.

    Both sides go through extract_final_number, so a GSM8K answer ("... #### 42") and a plain "42" both work.
    kwargs: tolerance (float >= 0, default 1e-6): largest absolute difference counted as equal;
    column (str, default "answer"): the data column holding the reference.
    """
    refs = column_values(columns, column, len(completions), "column")
    out = []
    for completion, ref in zip(completions, refs):
        got, want = extract_final_number(completion), extract_final_number(ref)
        out.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# format


def format_reward(
    completions: list[str],
    *,
    regex: str | None = None,
    fullmatch: bool = False,
    tags: list[str] | None = None,
    **columns,
) -> list[float]:
    """1.0 when the completion has the asked shape, else 0.0.

    kwargs: regex (str): a Python regex the completion must match (re.search; `.` also matches newlines);
    fullmatch (bool, default false): the regex must match the whole completion instead;
    tags (list of str, e.g. [think, answer]): each `<tag>...</tag>` must appear. Give regex, tags or both
    (with both, both must hold).
    """
    pattern = re.compile(regex, re.DOTALL) if regex is not None else None
    tag_patterns = [re.compile(rf"<{re.escape(t)}>.*?</{re.escape(t)}>", re.DOTALL) for t in _tag_names(tags or [])]
    out = []
    for c in completions:
        ok = pattern is None or bool(pattern.fullmatch(c) if fullmatch else pattern.search(c))
        out.append(float(ok and all(p.search(c) for p in tag_patterns)))
    return out


def _tag_names(tags: Sequence[str]) -> list[str]:
    return [t.strip().strip("<>/").strip() for t in tags]


# ----------------------------------------------------------------------------------------------------------------------
# length


def length(
    completions: list[str], *, min_chars: int = 0, max_chars: int | None = None, penalty: float = 0.01, **columns
) -> list[float]:
    """0.0 for a completion of min_chars..max_chars characters; outside, -penalty per character of distance to
    the band, down to -1.0.

    Counted in characters, not tokens, so the same recipe scores the same on every model and backend.
    kwargs: min_chars (int, default 0); max_chars (int or null, default null: no upper bound);
    penalty (float > 0, default 0.01: 100 characters outside the band cost the full -1).
    """
    out = []
    for c in completions:
        n = len(c)
        distance = min_chars - n if n < min_chars else (n - max_chars if max_chars is not None and n > max_chars else 0)
        out.append(-min(1.0, penalty * distance) if distance > 0 else 0.0)
    return out
