"""The built-in workflows: `single` (one completion per task) and `solver_judge` (rLLM's solver-judge example).

solver_judge (rllm-org/rllm examples/solver_judge/solver_judge_flow.py, on Countdown): the solver proposes
`num_solutions` answers to the task; the same model, prompted as a judge with the task and the numbered candidates,
names one. The solver's trajectories are each rewarded with the recipe rewards of their answer (times
workflow.solver_reward); the judge's with workflow.judge_reward when the answer it picked is correct (its rewards'
total reaches workflow.correct_threshold), else 0. Both roles are trained by GRPO, grouped per trajectory.

Departures from rLLM: the judge is shown each candidate's whole completion (rLLM shows the extracted <answer>), the
pick is the last <answer>k</answer> or else the first integer in the reply (small models do not write the tags), and
sampling is batched over every episode of a step: one sampler call for all the solvers, one for all the judges.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fai_rl.config.schema import WorkflowConfig
from fai_rl.workflows.base import Episode, Sampler, Step, Trajectory, render_chat, user_text

Score = Callable[[list[dict], list[str]], list[float]]
_ANSWER_TAG = re.compile(r"<answer>\s*(\d+)\s*</answer>", re.IGNORECASE)
_INTEGER = re.compile(r"\d+")


def parse_pick(reply: str, num_solutions: int) -> int | None:
    """The 0-based index of the solution a judge's reply names (1-based in the reply); None when it names none."""
    tags = _ANSWER_TAG.findall(reply)
    found = tags[-1] if tags else (m.group(0) if (m := _INTEGER.search(reply)) else None)
    if found is None or not 1 <= int(found) <= num_solutions:
        return None
    return int(found) - 1


class SingleWorkflow:
    """`workflow.type: single`: one solver completion per episode, rewarded by the recipe rewards (plain GRPO)."""

    def __init__(self, config: WorkflowConfig, score: Score, max_length: int | None = None):
        self.config, self.score, self.max_length = config, score, max_length

    def run(self, row: dict, sampler: Sampler) -> Episode:
        return self.run_batch([row], sampler)[0]

    def run_batch(self, rows: list[dict], sampler: Sampler) -> list[Episode]:
        prompts = [render_chat(sampler.tokenizer, row["prompt"], self.max_length) for row in rows]
        completions = [group[0] for group in sampler.sample(prompts, 1)]
        scores = self.score(rows, [c.text for c in completions])
        threshold = self.config.correct_threshold
        return [
            Episode([Trajectory("solver", [Step.from_completion(p, c, s)], s, s >= threshold)])
            for p, c, s in zip(prompts, completions, scores, strict=True)
        ]


class SolverJudgeWorkflow:
    """`workflow.type: solver_judge`: num_solutions solver trajectories and one judge trajectory per episode."""

    def __init__(self, config: WorkflowConfig, score: Score, max_length: int | None = None):
        self.config, self.score, self.max_length = config, score, max_length

    def run(self, row: dict, sampler: Sampler) -> Episode:
        return self.run_batch([row], sampler)[0]

    def judge_messages(self, row: dict, solutions: list[str]) -> list[dict]:
        """The judge's conversation: the task's system message (if any), then the judge prompt."""
        c = self.config
        listed = "\n".join(c.judge_solution_format.format(index=i, solution=s.strip())
                           for i, s in enumerate(solutions, start=1))
        text = c.judge_prompt.format(problem=user_text(row["prompt"]), solutions=listed,
                                     num_solutions=len(solutions))
        system = [m for m in row["prompt"][:1] if m["role"] == "system"]
        return [*system, {"role": "user", "content": text}]

    def run_batch(self, rows: list[dict], sampler: Sampler) -> list[Episode]:
        c, tok, k = self.config, sampler.tokenizer, self.config.num_solutions
        solver_prompts = [render_chat(tok, row["prompt"], self.max_length) for row in rows]
        solutions = sampler.sample(solver_prompts, k)
        scores = self.score([row for row in rows for _ in range(k)], [s.text for group in solutions for s in group])
        judge_prompts = [render_chat(tok, self.judge_messages(row, [s.text for s in group]), self.max_length)
                         for row, group in zip(rows, solutions, strict=True)]
        replies = [group[0] for group in sampler.sample(judge_prompts, 1)]
        episodes = []
        for i, (solver_prompt, group, judge_prompt, reply) in enumerate(
                zip(solver_prompts, solutions, judge_prompts, replies, strict=True)):
            mine = scores[i * k : (i + 1) * k]
            correct = [s >= c.correct_threshold for s in mine]
            solvers = [Trajectory("solver", [Step.from_completion(solver_prompt, s, c.solver_reward * score)],
                                  c.solver_reward * score, ok)
                       for s, score, ok in zip(group, mine, correct, strict=True)]
            pick = parse_pick(reply.text, k)
            picked_right = pick is not None and correct[pick]
            judge_reward = c.judge_reward * float(picked_right)
            judge = Trajectory("judge", [Step.from_completion(judge_prompt, reply, judge_reward)], judge_reward,
                               picked_right)
            metrics = {"solver_acc": sum(correct) / k, "judge_acc": float(picked_right),
                       "judge_valid_pick": float(pick is not None)}
            episodes.append(Episode([*solvers, judge], metrics))
        return episodes
