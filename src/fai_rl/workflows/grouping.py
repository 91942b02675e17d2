"""From episodes to per-step advantages: rLLM's trajectory grouping (or step grouping) and GRPO's estimator.

Each training step runs `num_generations` episodes of every task. With `grouping: trajectory` (rLLM's default,
`build_trajectory_groups` keyed by `task_id:trajectory.name`), all trajectories of one role in the episodes of one task
form a group: in solver_judge that is num_generations x num_solutions solver trajectories and num_generations judge
trajectories per task. Each trajectory's reward is compared within its group (fai_rl.rl_math.keyed_group_advantages)
and the advantage is broadcast to every step of the trajectory. With `grouping: step` (rLLM's per-step mode), the
steps at the same position of one role are grouped instead, each with its own step reward.

training.drop_zero_variance_groups (DAPO's dynamic-sampling filter, as the RL drivers apply it) leaves out the groups
whose compared rewards are all equal (drop_flat_groups): their advantages are all 0, so they only dilute the update.
"""

from __future__ import annotations

from dataclasses import dataclass

from fai_rl.workflows.base import Episode, Step


@dataclass
class ScoredStep:
    """A step to train on, with its role and advantage."""

    step: Step
    role: str
    advantage: float
    group: tuple = ()  # the group it was compared in: (task, role), or (task, role, position) with grouping step
    compared: float = 0.0  # the reward compared in that group: its trajectory's, or its own with grouping step


def step_advantages(episodes: list[Episode], task_ids: list, grouping: str, norm_by_std: bool) -> list[ScoredStep]:
    """Every step of every episode with its GRPO advantage; `task_ids[i]` names the task episode i ran."""
    if grouping not in ("trajectory", "step"):
        raise ValueError(f"grouping must be trajectory or step, not {grouping!r}")
    from fai_rl.rl_math import keyed_group_advantages  # torch: imported on use, so recipe checks stay light

    out: list[ScoredStep] = []
    if grouping == "trajectory":
        trajectories = [(task, t) for episode, task in zip(episodes, task_ids, strict=True)
                        for t in episode.trajectories if t.steps]
        advantages = keyed_group_advantages([t.reward for _, t in trajectories],
                                            [(task, t.name) for task, t in trajectories], norm_by_std)
        for (task, t), a in zip(trajectories, advantages, strict=True):
            out += [ScoredStep(s, t.name, a, (task, t.name), t.reward) for s in t.steps]
        return out
    steps = [(task, t.name, j, s) for episode, task in zip(episodes, task_ids, strict=True)
             for t in episode.trajectories for j, s in enumerate(t.steps)]
    advantages = keyed_group_advantages([s.reward for *_, s in steps], [(task, name, j) for task, name, j, _ in steps],
                                        norm_by_std)
    return [ScoredStep(s, name, a, (task, name, j), s.reward)
            for (task, name, j, s), a in zip(steps, advantages, strict=True)]


def drop_flat_groups(scored: list[ScoredStep]) -> tuple[list[ScoredStep], int]:
    """The steps without those of groups whose compared rewards are all equal (a group of one included: it has
    nothing to compare with), and how many groups were dropped (logged as groups_dropped)."""
    rewards: dict[tuple, set[float]] = {}
    for s in scored:
        rewards.setdefault(s.group, set()).add(s.compared)
    flat = {group for group, seen in rewards.items() if len(seen) < 2}
    return [s for s in scored if s.group not in flat], len(flat)
