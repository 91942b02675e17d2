"""No row or prompt is cut to a length limit without being counted (issue 16).

Every place that fits tokens into `data.max_length` counts what it cut with a Truncations: the rows (prompts, SFT
examples, preference pairs) that were longer and the tokens dropped. A run says it in one line naming the key to raise
(at the start where the data fixes it: SFT, DPO, PPO; at the end where prompts are rendered as they are sampled: RL
on Tinker, workflows) and logs it as `truncated_<noun>s` / `truncated_<noun>_tokens` in metrics.jsonl (per step where
sampling cuts, one step-0 row where the data does). Which side is cut is each caller's rule, said in the line:
- prompts are cut from the left: the end holds the latest turn and the opened assistant turn the model answers (a
  system prompt or instructions at the head can be lost: that is why it is said and counted, not done quietly);
- SFT rows and DPO pairs are cut from the right (TRL's `keep_start`): the prompt stays, the reply's tail goes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Truncations:
    """Counts of what one run (or one step) cut to `limit` tokens; `noun` names a row in metrics and messages."""

    noun: str  # "prompt", "row", "pair"
    limit: int | None
    side: str = "left"  # which end is cut away
    key: str = "data.max_length"  # the recipe key to raise
    seen: int = 0
    rows: int = 0
    tokens: int = 0  # dropped
    left_out: int = 0  # rows dropped whole because nothing of use fits (TRL's DPO: a prompt that fills the limit)

    def count(self, full: int, kept: int | None = None) -> bool:
        """Record one row of `full` tokens of which `kept` stay (default: as many as the limit allows)."""
        kept = (min(full, self.limit) if self.limit else full) if kept is None else kept
        self.seen += 1
        if full > kept:
            self.rows += 1
            self.tokens += full - kept
        return full > kept

    def cut_left(self, ids: list[int]) -> list[int]:
        """The last `limit` tokens of `ids` (all of them when they fit), counted."""
        return ids[-self.limit:] if self.count(len(ids)) else ids

    def add(self, other: "Truncations") -> None:
        self.seen, self.rows, self.tokens = self.seen + other.seen, self.rows + other.rows, self.tokens + other.tokens

    def metrics(self) -> dict[str, float]:
        """{truncated_<noun>s: rows cut, truncated_<noun>_tokens: tokens dropped} for metrics.jsonl."""
        out = {f"truncated_{self.noun}s": float(self.rows), f"truncated_{self.noun}_tokens": float(self.tokens)}
        return {**out, f"truncated_{self.noun}s_left_out": float(self.left_out)} if self.left_out else out

    def line(self, what: str | None = None) -> str | None:
        """One line for the console when anything was cut (None when nothing was)."""
        if not self.rows and not self.left_out:
            return None
        gone = (f"; {self.left_out} more left out whole (truncated_{self.noun}s_left_out): nothing of use fits"
                if self.left_out else "")
        return (f"{self.rows} of {self.seen} {what or self.noun + 's'} longer than {self.key}={self.limit} "
                f"tokens were cut from the {self.side} ({self.tokens} tokens dropped; logged as "
                f"truncated_{self.noun}s){gone}; raise {self.key} to keep them whole.")

    def report(self, what: str | None = None) -> None:
        """Print line() as a note when anything was cut."""
        if (text := self.line(what)) is not None:
            print(f"note: {text}", flush=True)
