"""One error hierarchy for everything a user can get wrong.

The CLI turns any FaiRLError into its message on stderr and exit code 2, with no traceback: these errors are about the
user's recipe, data or environment, never about a bug in fai-rl.
"""

from __future__ import annotations


class FaiRLError(Exception):
    """Base of every error fai-rl reports to a user."""


class RecipeError(FaiRLError):
    """One or more problems in a recipe; `problems` holds one line per problem, each naming its dotted key."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "the recipe has 1 error:" if n == 1 else f"the recipe has {n} errors:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class DataError(FaiRLError):
    """Data that cannot be trained on: a missing column, a bad row (named by file:line or split:index)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "the data has 1 problem:" if n == 1 else f"the data has {n} problems:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class BackendError(FaiRLError):
    """The chosen backend cannot run the recipe here (missing package, no GPU, unavailable service)."""
