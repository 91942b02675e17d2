"""RewardFn: one reward function wrapped to be called the TRL way, with its output checked.

TRL calls a reward as `f(prompts=, completions=, completion_ids=, trainer_state=, log_extra=, ..., **columns)` with
conversational prompts/completions as lists of message dicts. Users write `f(completions, answer, **kw)` on plain
strings and return one number per completion. RewardFn sits between the two: it turns messages into strings, passes
only what the function declares (everything when it takes **kwargs, as TRL does), adds the recipe's kwargs, and
turns a wrong result or an exception into a RewardError that names the function and the row. Backends other than
TRL (own PPO, Tinker) call the same object, or score_rewards for the weighted total.
"""

from __future__ import annotations

import inspect
import math
import numbers
import traceback
from collections.abc import Callable
from typing import Any

from fai_rl.errors import FaiRLError

# Keyword arguments TRL adds that are not dataset columns: passed only to functions that ask for them.
TRL_INTERNAL = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")
# Row keys that are not columns for rewards (TRL drops the same ones before calling).
_NOT_COLUMNS = ("prompt", "completion", "completion_ids")


class RewardError(FaiRLError):
    """A reward function raised, or returned something other than one finite number (or None) per completion."""


class RewardFn:
    """A reward function called the TRL way; `.name` (also `__name__`, which TRL logs under) and `.weight`.

    `function(prompts=list[str], completions=list[str], **columns, **kwargs) -> list[float | None]`, where the
    function may declare only the parameters it uses. `kwargs` (the recipe's) win over a data column of the same
    name. `locate_failing_row` re-runs a failed batch one row at a time to name the first row that fails; it is off
    for rewards whose calls are costly or have effects (a model, an HTTP endpoint).
    """

    def __init__(
        self,
        function: Callable,
        *,
        name: str | None = None,
        weight: float = 1.0,
        kwargs: dict[str, Any] | None = None,
        where: str | None = None,
        locate_failing_row: bool = True,
    ):
        self.function = function
        self.name = name or getattr(function, "__name__", type(function).__name__)
        self.__name__ = self.name
        self.weight = float(weight)
        self.kwargs = dict(kwargs or {})
        self.where = where
        self.locate_failing_row = locate_failing_row
        self._params, self._takes_any, self._required = _parameters(function)

    def __repr__(self) -> str:
        return f"RewardFn({self.name!r}, weight={self.weight})"

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        n = len(completions)
        prompts = [prompt_text(p) for p in prompts] if prompts is not None else [""] * n
        completions = [completion_text(c) for c in completions]
        if len(prompts) != n:
            raise RewardError(f"{self._label()}: got {len(prompts)} prompts for {n} completions; pass one for each.")
        call = self._arguments(prompts, completions, columns)
        try:
            result = self.function(**call)
        except RewardError as e:
            raise RewardError(f"{self._label()}: {e}") from e
        except Exception as e:  # noqa: BLE001 - any failure of user code becomes a RewardError naming function and row
            raise RewardError(self._failure_message(e, call, completions)) from e
        return self._check(result, n)

    # ------------------------------------------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"reward '{self.name}'" + (f" ({self.where})" if self.where else "")

    def _arguments(self, prompts: list[str], completions: list[str], columns: dict) -> dict:
        data = {k: v for k, v in columns.items() if k not in TRL_INTERNAL}
        internal = {k: v for k, v in columns.items() if k in TRL_INTERNAL}
        # Recipe kwargs win over same-named columns. A function that takes **kwargs gets everything, as under TRL.
        offered = {"prompts": prompts, "completions": completions, **internal, **data, **self.kwargs}
        call = offered if self._takes_any else {k: v for k, v in offered.items() if k in self._params}
        missing = [p for p in self._required if p not in call]
        if missing:
            have = ", ".join(sorted(data)) or "none"
            raise RewardError(
                f"{self._label()}: the function needs {', '.join(repr(m) for m in missing)}, which is neither a data "
                f"column (columns here: {have}) nor one of its kwargs; rename the column (data.datasets[].*_column), "
                "add it to the reward's kwargs, or give the parameter a default."
            )
        return call

    def _failure_message(self, error: Exception, call: dict, completions: list[str]) -> str:
        n = len(completions)
        row = 0 if n == 1 else None
        if self.locate_failing_row and n > 1:
            row, error = self._failing_row(call, n, error)
        where = f" on row {row} (completion {_short(completions[row])})" if row is not None else f" on a batch of {n}"
        return (
            f"{self._label()} raised {type(error).__name__}: {error}{where}{_user_frame(error)}; fix the function or "
            "the data (a reward returns one number, or None, per completion)."
        )

    def _failing_row(self, call: dict, n: int, error: Exception) -> tuple[int | None, Exception]:
        """The first row that fails when the batch is re-run one row at a time (None: only the batch fails)."""
        for i in range(n):
            one = {k: (v[i : i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v) for k, v in call.items()}
            try:
                self.function(**one)
            except Exception as e:  # noqa: BLE001
                return i, e
        return None, error

    def _check(self, result: Any, n: int) -> list[float | None]:
        if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
            result = result.tolist()  # numpy arrays, torch tensors
        if not isinstance(result, (list, tuple)):
            raise RewardError(
                f"{self._label()} returned {type(result).__name__} {_short(result)}; return a list with one number "
                f"(or None) per completion ({n} here)."
            )
        if len(result) != n:
            raise RewardError(
                f"{self._label()} returned {len(result)} scores for {n} completions (rows 0..{n - 1}); return one "
                "number (or None where it does not apply) per completion, in order."
            )
        scores: list[float | None] = []
        for i, value in enumerate(result):
            if value is None:
                scores.append(None)
                continue
            if not isinstance(value, numbers.Real):
                raise RewardError(
                    f"{self._label()} returned {_short(value)} ({type(value).__name__}) for row {i}; scores must be "
                    "numbers, or None where the reward does not apply."
                )
            value = float(value)
            if not math.isfinite(value):
                raise RewardError(
                    f"{self._label()} returned {value} for row {i}; scores must be finite (return None where the "
                    "reward does not apply)."
                )
            scores.append(value)
        return scores


def prompt_text(prompt: Any) -> str:
    """A prompt as text: a string as is; a conversation -> the content of its last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return _content(users[-1]) if users else (_content(prompt[-1]) if prompt else "")
    return "" if prompt is None else str(prompt)


def completion_text(completion: Any) -> str:
    """A completion as text: a string as is; TRL's `[{"role": "assistant", "content": ...}]` -> the last assistant
    message's content (tool-calling turns end with the final assistant reply)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion)
    if isinstance(completion, list):
        replies = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return _content(replies[-1]) if replies else ""
    return "" if completion is None else str(completion)


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def _parameters(function: Callable) -> tuple[set[str], bool, list[str]]:
    """(names it takes by keyword, whether it takes **kwargs, names it requires)."""
    try:
        sig = inspect.signature(function)
    except (TypeError, ValueError):  # some C callables: assume they take anything
        return set(), True, []
    params, takes_any, required = set(), False, []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            takes_any = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params.add(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return params, takes_any, required


def _user_frame(error: BaseException) -> str:
    """' (at file.py:12)': where the error was raised, since the CLI prints no traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------------
# Scoring and the --dry-run preview


def score_rewards(
    fns: list[RewardFn], prompts: list, completions: list, rows: list[dict]
) -> tuple[list[float], dict[str, list[float | None]]]:
    """(weighted total per completion, each function's raw scores by name) for completions of these rows.

    `rows[i]` holds the data columns of completion i (its dataset row). As in TRL, a None score adds nothing to the
    total (TRL sums with nansum), so a row where no reward applies totals 0.
    """
    if not len(prompts) == len(completions) == len(rows):
        raise ValueError(f"score_rewards: {len(prompts)} prompts, {len(completions)} completions, {len(rows)} rows")
    scores = [fn(prompts=prompts, completions=completions, **_columns(rows)) for fn in fns]
    totals = [_total(fns, [s[i] for s in scores]) for i in range(len(completions))]
    return totals, {fn.name: s for fn, s in zip(fns, scores, strict=True)}


def preview_rewards(fns: list[RewardFn], rows: list[dict], n: int = 3) -> str:
    """A table of every reward on the first `n` rows, each answered with the row's `answer` (or "" without one).

    For --dry-run: a correct answer that scores low points at a reward reading the wrong column or format. Raises
    RewardError (with the table) when a reward fails on these rows.
    """
    rows = rows[:n]
    prompts = [row.get("prompt", "") for row in rows]
    completions = ["" if row.get("answer") is None else str(row["answer"]) for row in rows]
    scores: list[list] = []
    failures: list[str] = []
    for fn in fns:
        try:
            scores.append(fn(prompts=prompts, completions=completions, **_columns(rows)))
        except RewardError as e:
            scores.append(["error"] * len(rows))
            failures.append(str(e))
    header = ["row", "prompt", "completion", *(fn.name for fn in fns), "total"]
    table = [header]
    for i in range(len(rows)):
        cells = [s[i] for s in scores]
        total = "error" if "error" in cells else _total(fns, cells)
        texts = [_cell(prompt_text(prompts[i])), _cell(completions[i])]
        table.append([str(i), *texts, *map(_number, cells), _number(total)])
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    formula = " + ".join(f"{fn.weight:g}*{fn.name}" for fn in fns) or "0"
    text = "\n".join([
        f"rewards on the first {len(rows)} rows, each answered with the row's `answer` "
        "(a correct answer should score high):", *lines, f"total = {formula}; n/a = None (the reward does not apply)",
    ])
    if failures:
        raise RewardError("\n".join([text, *failures]))
    return text


def _total(fns: list[RewardFn], cells: list[float | None]) -> float:
    return float(sum(fn.weight * c for fn, c in zip(fns, cells, strict=True) if c is not None))


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in _NOT_COLUMNS]
    return {k: [row.get(k) for row in rows] for k in keys}


def _cell(text: str, width: int = 32) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
