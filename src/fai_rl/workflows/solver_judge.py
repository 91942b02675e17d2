"""The built-in workflows: `single` (one completion per task) and `solver_judge` (rLLM's solver-judge example).

solver_judge (rllm-org/rllm examples/solver_judge/solver_judge_flow.py, on Countdown): the solver proposes
`num_solutions` answers to the task; the same model, prompted as a judge with the task and the numbered candidates,
names one. The solver's trajectories are each rewarded with the recipe rewards of their answer (times
workflow.solver_reward); the judge's with workflow.judge_reward when the answer it picked is correct (its rewards'
total reaches workflow.correct_threshold), else 0. Both roles are trained by GRPO, grouped per trajectory.

The judge is shown each candidate's extracted answer, as rLLM shows it. With `workflow.answer_tags: true` the parsing
is rLLM's (`_parse_solver_response`, `_parse_judge_response`): a solver's answer is `<answer>X</answer>` from its
first tag (case-insensitive, across lines) or "No solution found", and that text is what the rewards score; the
judge's pick is its first `<answer>k</answer>`. With `answer_tags: false` (small models write no tags) the answer is
the last tag's content or else the whole completion, and the pick the last `<answer>k</answer>` or else the first
integer of the reply.

Departures from rLLM: a pick outside 1..num_solutions is no pick (rLLM indexes `solutions[k - 1]`, so
`<answer>0</answer>` picks the last solution); sampling is batched over every episode of a step (one sampler call
for all the solvers, one for all the judges); a prompt longer than data.max_length is cut from the left (the end holds
the question and the opened assistant turn), counted per step as truncated_prompts / truncated_prompt_tokens and said
in one line at the end of the run, where rLLM masks such episodes out.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fai_rl.config.schema import WorkflowConfig
from fai_rl.data.truncation import Truncations
from fai_rl.workflows.base import Episode, Sampler, Step, Trajectory, render_chat, user_text

Score = Callable[[list[dict], list[str]], list[float]]
_ANSWER_TAG = re.compile(r"<answer>\s*(\d+)\s*</answer>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_INTEGER = re.compile(r"\d+")
NO_SOLUTION = "No solution found"  # rLLM's answer of a solver that wrote no <answer> tag


def parse_pick(reply: str, num_solutions: int, answer_tags: bool = False) -> int | None:
    """The 0-based index of the solution a judge's reply names (1-based in the reply); None when it names none.

    answer_tags: only the first <answer>...</answer> counts and must hold an integer (rLLM's parsing)."""
    if answer_tags:
        first = _ANY_TAG.search(reply)
        found = first.group(1).strip() if first else None
        found = found if found is not None and re.fullmatch(r"[+-]?\d+", found) else None
    else:
        tags = _ANSWER_TAG.findall(reply)
        found = tags[-1] if tags else (m.group(0) if (m := _INTEGER.search(reply)) else None)
    if found is None or not 1 <= int(found) <= num_solutions:
        return None
    return int(found) - 1


def extract_answer(completion: str, answer_tags: bool = False) -> str:
    """What a solver answered: rLLM's `<answer>X</answer>` of the first tag (answer_tags; else "No solution found"),
    or the last tag's content, else the whole completion stripped."""
    if answer_tags:
        first = _ANY_TAG.search(completion)
        return f"<answer>{first.group(1).strip()}</answer>" if first else NO_SOLUTION
    tags = _ANY_TAG.findall(completion)
    return tags[-1].strip() if tags else completion.strip()


class _Cuts:
    """A workflow's prompts cut to data.max_length (fai_rl.data.truncation): the run's total in `run` (the loops print
    its line at the end), each episode's own counts in its truncated_prompts / truncated_prompt_tokens metrics."""

    def __init__(self, max_length: int | None):
        self.run = Truncations("prompt", max_length)

    def render(self, tokenizer, conversations: list[list[dict]]) -> tuple[list[list[int]], list[Truncations]]:
        each = [Truncations("prompt", self.run.limit) for _ in conversations]
        ids = [mine.cut_left(render_chat(tokenizer, m)) for mine, m in zip(each, conversations, strict=True)]
        for mine in each:
            self.run.add(mine)
        return ids, each


class SingleWorkflow:
    """`workflow.type: single`: one solver completion per episode, rewarded by the recipe rewards (plain GRPO)."""

    def __init__(self, config: WorkflowConfig, score: Score, max_length: int | None = None):
        self.config, self.score, self.max_length = config, score, max_length
        self.cuts = _Cuts(max_length)

    def run(self, row: dict, sampler: Sampler) -> Episode:
        return self.run_batch([row], sampler)[0]

    def run_batch(self, rows: list[dict], sampler: Sampler) -> list[Episode]:
        prompts, cut = self.cuts.render(sampler.tokenizer, [row["prompt"] for row in rows])
        completions = [group[0] for group in sampler.sample(prompts, 1)]
        scores = self.score(rows, [c.text for c in completions])
        threshold = self.config.correct_threshold
        return [
            Episode([Trajectory("solver", [Step.from_completion(p, c, s)], s, s >= threshold)],
                    x.metrics())
            for p, c, s, x in zip(prompts, completions, scores, cut, strict=True)
        ]


class SolverJudgeWorkflow:
    """`workflow.type: solver_judge`: num_solutions solver trajectories and one judge trajectory per episode."""

    def __init__(self, config: WorkflowConfig, score: Score, max_length: int | None = None):
        self.config, self.score, self.max_length = config, score, max_length
        self.cuts = _Cuts(max_length)

    def run(self, row: dict, sampler: Sampler) -> Episode:
        return self.run_batch([row], sampler)[0]

    def judge_messages(self, row: dict, solutions: list[str]) -> list[dict]:
        """The judge's conversation: the task's system message (if any), then the judge prompt over the problem (the
        solver's message without workflow.solver_instruction) and the solvers' answers."""
        c = self.config
        listed = "\n".join(c.judge_solution_format.format(index=i, solution=s.strip())
                           for i, s in enumerate(solutions, start=1))
        problem = user_text(row["prompt"])
        if c.solver_instruction and problem.endswith(c.solver_instruction):
            problem = problem[: -len(c.solver_instruction)]
        text = c.judge_prompt.format(problem=problem, solutions=listed, num_solutions=len(solutions))
        system = [m for m in row["prompt"][:1] if m["role"] == "system"]
        return [*system, {"role": "user", "content": text}]

    def run_batch(self, rows: list[dict], sampler: Sampler) -> list[Episode]:
        c, tok, k = self.config, sampler.tokenizer, self.config.num_solutions
        solver_prompts, solver_cut = self.cuts.render(tok, [row["prompt"] for row in rows])
        solutions = sampler.sample(solver_prompts, k)
        answers = [[extract_answer(s.text, c.answer_tags) for s in group] for group in solutions]
        # rLLM scores what the solver answered (its parsed action); so does answer_tags: true
        scored = [a for group in answers for a in group] if c.answer_tags else [
            s.text for group in solutions for s in group]
        scores = self.score([row for row in rows for _ in range(k)], scored)
        judge_prompts, judge_cut = self.cuts.render(
            tok, [self.judge_messages(row, group) for row, group in zip(rows, answers, strict=True)])
        replies = [group[0] for group in sampler.sample(judge_prompts, 1)]
        episodes = []
        for i, (solver_prompt, group, judge_prompt, reply) in enumerate(
                zip(solver_prompts, solutions, judge_prompts, replies, strict=True)):
            mine = scores[i * k : (i + 1) * k]
            correct = [s >= c.correct_threshold for s in mine]
            solvers = [Trajectory("solver", [Step.from_completion(solver_prompt, s, c.solver_reward * score)],
                                  c.solver_reward * score, ok)
                       for s, score, ok in zip(group, mine, correct, strict=True)]
            pick = parse_pick(reply.text, k, c.answer_tags)
            picked_right = pick is not None and correct[pick]
            judge_reward = c.judge_reward * float(picked_right)
            judge = Trajectory("judge", [Step.from_completion(judge_prompt, reply, judge_reward)], judge_reward,
                               picked_right)
            cut = Truncations("prompt", self.max_length)
            cut.add(solver_cut[i])
            cut.add(judge_cut[i])
            metrics = {"solver_acc": sum(correct) / k, "judge_acc": float(picked_right),
                       "judge_valid_pick": float(pick is not None), **cut.metrics()}
            episodes.append(Episode([*solvers, judge], metrics))
        return episodes
