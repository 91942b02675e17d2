"""One error hierarchy for everything a user can get wrong.

The CLI turns any FaiRLError into its message on stderr and exit code 2, with no traceback: these errors are about the
user's recipe, data or environment, never about a bug in fai-rl.
"""

from __future__ import annotations


class FaiRLError(Exception):
    """Base of every error fai-rl reports to a user."""


class _ProblemList(FaiRLError):
    """Several one-line problems reported together under a heading that counts them; `problems` holds the lines."""

    heading = "{n} problem{s}:"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = self.heading.format(n=n, s="" if n == 1 else "s")
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class RecipeError(_ProblemList):
    """Problems in a recipe, each naming its dotted key (and file:line where known), the value and the fix."""

    heading = "the recipe has {n} error{s}:"


class DataError(_ProblemList):
    """Data that cannot be trained on: a missing column, bad rows (named by file:line or name[split]:index)."""

    heading = "the data has {n} problem{s}:"


class BackendError(FaiRLError):
    """The chosen backend cannot run the recipe here (missing package, no GPU, unavailable service)."""


class UsageError(FaiRLError):
    """A command-line argument that cannot be used: a path that is not a model or run, a flag out of range."""
