"""The workflow interface: what a workflow is given (a task row, a sampler) and what it returns (trajectories).

After rLLM's `Workflow` / `Episode` / `Trajectory` / `Step` (rllm-org/rllm, v0.2): one run of a workflow on a task is
an *episode*, a list of named trajectories (one per role played: "solver", "judge", ...), each a list of steps, each
step one sampled completion with the sampler's log-probs and a reward. GRPO then groups trajectories of the same
role over the episodes of one task (fai_rl.workflows.grouping).

Departures from rLLM: no async engine; a workflow may offer `run_batch` (every episode of a training step at once)
so that sampling is batched (one `generate` call per stage on the local backend, all requests in flight on Tinker);
`run_workflow` falls back to calling `run` row by row for workflows that only write `run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fai_rl.sampling import Completion, render_chat

__all__ = ["Completion", "Episode", "Sampler", "Step", "Trajectory", "Workflow", "render_chat", "run_workflow"]


@dataclass
class Step:
    """One model call inside a trajectory: the prompt it saw, what it sampled, and the step's reward."""

    prompt_tokens: list[int]
    completion_tokens: list[int]
    logprobs: list[float]  # the sampler's log-prob of each completion token (the "old" policy of the update)
    text: str = ""
    stopped: bool = True
    reward: float = 0.0

    @classmethod
    def from_completion(cls, prompt_tokens: list[int], c: Completion, reward: float = 0.0) -> "Step":
        logprobs = list(c.logprobs) if c.logprobs is not None else [0.0] * len(c.tokens)  # a service without them
        return cls(list(prompt_tokens), list(c.tokens), logprobs, c.text, c.stopped, reward)


@dataclass
class Trajectory:
    """The steps one role took in an episode; `reward` is the trajectory's (what `grouping: trajectory` uses)."""

    name: str  # the role: GRPO groups trajectories by (task, name)
    steps: list[Step]
    reward: float = 0.0
    correct: bool | None = None  # did this role get the task right (pass@k, judge accuracy); None: not judged


@dataclass
class Episode:
    """One run of a workflow on one task row."""

    trajectories: list[Trajectory]
    metrics: dict[str, float] = field(default_factory=dict)

    def role(self, name: str) -> list[Trajectory]:
        return [t for t in self.trajectories if t.name == name]


@runtime_checkable
class Sampler(Protocol):
    """What a workflow samples through: the policy's tokenizer and batched sampling with log-probs.

    `sample` returns, for each prompt (token ids, chat template already applied), `n` completions. max_tokens and
    temperature default to the recipe's training.max_completion_length and training.temperature.
    """

    tokenizer: Any

    def sample(self, prompts: list[list[int]], n: int, max_tokens: int | None = None,
               temperature: float | None = None) -> list[list[Completion]]: ...


class Workflow(Protocol):
    """A workflow: given a task row and a sampler, one episode (trajectories with rewards).

    `row["prompt"]` is the task as chat messages (the recipe's prompt column or workflow.solver_prompt); every other
    dataset column travels with it. Built-in and `module:Class` workflows are constructed as
    `Class(config=recipe.workflow, score=..., max_length=..., **recipe.workflow.kwargs)`, where
    `score(rows, texts) -> list[float]` is the recipe rewards' weighted total of each text as an answer to its row.
    A workflow may also define `run_batch(rows, sampler) -> list[Episode]` to sample all episodes at once.
    """

    def run(self, row: dict, sampler: Sampler) -> Episode: ...


def run_workflow(workflow: Any, rows: list[dict], sampler: Sampler) -> list[Episode]:
    """One episode per row, through `run_batch` when the workflow has it (batched sampling), else `run` per row."""
    if hasattr(workflow, "run_batch"):
        episodes = workflow.run_batch(rows, sampler)
    else:
        episodes = [workflow.run(row, sampler) for row in rows]
    if len(episodes) != len(rows):
        raise ValueError(f"workflow {type(workflow).__name__} returned {len(episodes)} episodes for {len(rows)} rows")
    return [e if isinstance(e, Episode) else Episode(list(e)) for e in episodes]  # a bare list of trajectories too


def user_text(messages: list[dict]) -> str:
    """The last user message of a conversation (what a judge is shown as the problem)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
