"""Multi-step workflows (fai_rl.workflows): the solver-judge workflow on hand-made cases, rLLM-style grouping into
advantages worked out here, evaluation (pass@k, judge accuracy), recipe errors, Countdown data by column mapping,
and the quickstart learning end to end on the local backend and (marked `tinker`) on the local Tinker server.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml
from conftest import ROOT

from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.config.schema import WorkflowConfig
from fai_rl.errors import RecipeError
from fai_rl.workflows.grouping import drop_flat_groups
from fai_rl.workflows.loop import report_truncations, rollout_metrics
from fai_rl.workflows.solver_judge import extract_answer
from fai_rl.workflows import (
    Completion,
    Episode,
    SolverJudgeWorkflow,
    Step,
    Trajectory,
    evaluate_workflow,
    parse_pick,
    render_chat,
    step_advantages,
    summarize_episodes,
)

QUICKSTART = ROOT / "recipes" / "quickstart" / "solver_judge.yaml"
DIGIT_ROW = {"prompt": [{"role": "user", "content": "What is 7 + 5?"}], "answer": "12"}


@pytest.fixture(scope="module")
def tokenizer():
    from fai_rl.models.load import load_tokenizer
    from fai_rl.config.schema import ModelConfig

    return load_tokenizer(ModelConfig(base_model_name="fai-rl/tiny-sft"))


class ScriptedSampler:
    """A Sampler that answers from a script (the texts a model would have sampled), tokenised for real."""

    def __init__(self, tokenizer, replies: dict[str, list[str]]):
        self.tokenizer, self.replies, self.prompts = tokenizer, replies, []

    def sample(self, prompts, n, max_tokens=None, temperature=None):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            script = next(v for k, v in self.replies.items() if k in text)
            assert len(script) == n
            out.append([self._completion(t) for t in script])
        return out

    def _completion(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return Completion(ids, text, [-0.5] * len(ids), True)


def exact(rows, texts):
    return [float(t.strip() == str(r["answer"])) for r, t in zip(rows, texts)]


def solver_judge(**config):
    return SolverJudgeWorkflow(WorkflowConfig(type="solver_judge", **config), score=exact, max_length=256)


# ---------------------------------------------------------------- the workflow on hand-made cases


@pytest.mark.parametrize("reply, picked_right", [("1", True), ("<answer>2</answer>", False), ("7", False)])
def test_solver_judge_rewards_the_solvers_and_the_judges_pick(tokenizer, reply, picked_right):
    sampler = ScriptedSampler(tokenizer, {"Which": [reply], "What is 7 + 5?": ["12", "11"]})
    workflow = solver_judge(judge_prompt="{problem}\n{solutions}\nWhich is right?", judge_reward=2.0)
    (episode,) = workflow.run_batch([DIGIT_ROW], sampler)
    solvers, judges = episode.role("solver"), episode.role("judge")
    assert [t.reward for t in solvers] == [1.0, 0.0] and [t.correct for t in solvers] == [True, False]
    assert len(judges) == 1 and judges[0].reward == (2.0 if picked_right else 0.0)
    assert judges[0].correct is picked_right
    assert episode.metrics["judge_valid_pick"] == (0.0 if reply == "7" else 1.0)
    # well-formed steps: the prompt as rendered, the completion ending in EOS, one log-prob per completion token
    assert solvers[0].steps[0].prompt_tokens == render_chat(tokenizer, DIGIT_ROW["prompt"])
    judge_text = sampler.prompts[1]
    assert "What is 7 + 5?\nSolution 1: 12\nSolution 2: 11\nWhich is right?" in judge_text
    for t in episode.trajectories:
        (step,) = t.steps
        assert step.completion_tokens[-1] == tokenizer.eos_token_id
        assert len(step.logprobs) == len(step.completion_tokens) and step.reward == t.reward


def test_parse_pick_reads_the_tag_or_the_first_integer():
    assert parse_pick("<answer>2</answer>", 3) == 1 and parse_pick("I pick 3, then 1", 3) == 2
    assert parse_pick("<answer>4</answer>", 3) is None and parse_pick("none", 3) is None


def test_single_workflow_is_one_rewarded_solver_completion(tokenizer):
    from fai_rl.workflows import SingleWorkflow

    workflow = SingleWorkflow(WorkflowConfig(), score=exact)
    episodes = workflow.run_batch([DIGIT_ROW, DIGIT_ROW], ScriptedSampler(tokenizer, {"7 + 5": ["12"]}))
    assert [[(t.name, t.reward, t.correct) for t in e.trajectories] for e in episodes] == [[("solver", 1.0, True)]] * 2


def test_local_sampler_logprobs_are_the_policys_so_the_first_update_starts_at_ratio_1(tokenizer, tmp_path):
    import torch

    from fai_rl.backends.local.workflow import build_policy, sequence_logprobs, update
    from fai_rl.workflows.samplers import LocalSampler

    recipe = load_recipe(_recipe(tmp_path), ["training.algorithm=gspo"])
    torch.manual_seed(0)
    model = build_policy(recipe)
    sampler = LocalSampler(model, tokenizer, max_tokens=4)
    episodes = solver_judge(judge_prompt="{problem}\n{solutions}\nWhich is right?").run_batch([DIGIT_ROW] * 8, sampler)
    steps = [s for e in episodes for t in e.trajectories for s in t.steps]
    with torch.no_grad():
        again = sequence_logprobs(model, steps, temperature=1.0)
    for step, lp in zip(steps, again):  # left-padded generate vs a right-padded forward: the same numbers
        assert lp.tolist() == pytest.approx(step.logprobs, abs=1e-4)
    scored = step_advantages(episodes, [0] * 8, "trajectory", norm_by_std=True)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = update(model, optimizer, scored, recipe)  # GSPO: sequence-level ratios
    assert math.isfinite(stats["loss"]) and stats["clip_ratio"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_dispatch_routes_workflow_recipes_to_the_workflow_loops(tmp_path):
    from fai_rl.backends import TRAINERS, WORKFLOW_TRAINERS, algorithm_module

    for backend in ("local", "tinker"):
        recipe = load_recipe(_recipe(tmp_path), [f"training.backend={backend}"])
        assert algorithm_module(recipe).__name__ == WORKFLOW_TRAINERS[(backend, "grpo")]
        single = load_recipe(_recipe(tmp_path, type="single"), [f"training.backend={backend}"])
        assert algorithm_module(single).__name__ == TRAINERS[(backend, "grpo")]


# ---------------------------------------------------------------- grouping into advantages


def _sj_episode(solver_rewards, judge_reward):
    step = lambda r: Step([1, 2], [3], [-0.1], reward=r)  # noqa: E731
    return Episode([*(Trajectory("solver", [step(r)], r, r == 1) for r in solver_rewards),
                    Trajectory("judge", [step(judge_reward)], judge_reward, judge_reward == 1)])


def test_trajectory_grouping_compares_each_role_within_its_task():
    # task 0: episode A solvers (1, 0), judge 1; episode B solvers (0, 0), judge 0. task 1: everything right.
    episodes = [_sj_episode([1, 0], 1), _sj_episode([0, 0], 0), _sj_episode([1, 1], 1), _sj_episode([1, 1], 1)]
    scored = step_advantages(episodes, [0, 0, 1, 1], "trajectory", norm_by_std=True)
    # solvers of task 0: rewards 1, 0, 0, 0 -> mean 0.25, population std sqrt(0.1875) = 0.4330
    s = math.sqrt(0.1875)
    assert [x.role for x in scored] == ["solver", "solver", "judge"] * 4
    assert [x.advantage for x in scored[:6]] == pytest.approx([0.75 / s, -0.25 / s, 1.0, -0.25 / s, -0.25 / s, -1.0])
    assert [x.advantage for x in scored[6:]] == [0.0] * 6  # task 1: no spread, nothing to learn
    plain = step_advantages(episodes, [0, 0, 1, 1], "trajectory", norm_by_std=False)
    assert [x.advantage for x in plain[:6]] == pytest.approx([0.75, -0.25, 0.5, -0.25, -0.25, -0.5])
    # training.drop_zero_variance_groups: groups per task and role; task 1's solvers (1,1,1,1) and judges (1,1) go
    kept, dropped = drop_flat_groups(scored)
    assert dropped == 2 and kept == scored[:6]
    flat_judges = [_sj_episode([1, 0], 1), _sj_episode([0, 1], 1)]  # task 0: solvers vary, both judges right
    kept, dropped = drop_flat_groups(step_advantages(flat_judges, [0, 0], "trajectory", norm_by_std=True))
    assert dropped == 1 and [x.role for x in kept] == ["solver"] * 4


def test_step_grouping_uses_each_steps_own_reward_where_trajectory_grouping_broadcasts():
    # A two-step role: episode 1 steps rewarded (1, 0), trajectory reward 1; episode 2 steps (0, 0), reward 0.
    def two_steps(r1, r2, total):
        return Episode([Trajectory("agent", [Step([1], [2], [0.0], reward=r1), Step([1], [2], [0.0], reward=r2)],
                                   total)])

    episodes = [two_steps(1, 0, 1), two_steps(0, 0, 0)]
    by_trajectory = step_advantages(episodes, [0, 0], "trajectory", norm_by_std=True)
    assert [x.advantage for x in by_trajectory] == pytest.approx([1, 1, -1, -1])  # [1, 0] -> +-1, on every step
    by_step = step_advantages(episodes, [0, 0], "step", norm_by_std=True)
    assert [x.advantage for x in by_step] == pytest.approx([1, 0, -1, 0])  # step 0: [1, 0]; step 1: [0, 0]
    assert drop_flat_groups(by_step) == ([by_step[0], by_step[2]], 1)  # with grouping step, per position


# ---------------------------------------------------------------- evaluation


def test_summarize_episodes_pass_at_k_and_judge_accuracy():
    # one task, 2 episodes: solvers (1, 0) judged right, (0, 0) judged wrong -> solver 1 of 4 right
    metrics = summarize_episodes([[_sj_episode([1, 0], 1), _sj_episode([0, 0], 0)]], k=2)
    assert metrics["solver_pass@1"] == 0.25 and metrics["solver_pass@2"] == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert metrics["judge_pass@1"] == 0.5 and metrics["judge_pass@2"] == 1.0
    assert metrics["judge_accuracy"] == 1.0 and metrics["judge_accuracy_mixed"] == 1.0  # only episode A was winnable
    assert metrics["reward/solver"] == 0.25 and metrics["reward/judge"] == 0.5


def test_evaluate_workflow_runs_each_task_k_times(tokenizer):
    sampler = ScriptedSampler(tokenizer, {"Solution 1: 12": ["2"], "What is 7 + 5?": ["12", "11"]})
    metrics = evaluate_workflow(solver_judge(), sampler, [DIGIT_ROW], k=3)
    assert len(sampler.prompts) == 6  # 3 episodes x (solver + judge)
    # 6 solver samples, 3 right: pass@3 = 1 - C(3,3)/C(6,3) = 1 - 1/20
    assert metrics["solver_pass@1"] == 0.5 and metrics["solver_pass@3"] == pytest.approx(0.95)
    assert metrics["judge_pass@1"] == 0.0 and metrics["judge_accuracy"] == 0.0


def test_evaluate_recipe_scores_a_local_model_on_the_recipes_held_out_tasks(tmp_path, tokenizer):
    import torch

    from fai_rl.backends.local.workflow import build_policy
    from fai_rl.workflows import evaluate_recipe

    recipe = load_recipe(_recipe(tmp_path), ["data.eval_datasets[0].max_samples=4"])
    torch.manual_seed(0)
    metrics = evaluate_recipe(recipe, build_policy(recipe), tokenizer, k=4)
    assert {"solver_pass@1", "solver_pass@4", "judge_pass@1", "judge_pass@4", "judge_accuracy"} <= set(metrics)
    assert 0 <= metrics["solver_pass@1"] <= metrics["solver_pass@4"] <= 1


# ---------------------------------------------------------------- recipes: errors, module:Class, Countdown data


def _recipe(tmp_path, **workflow):
    base = yaml.safe_load(QUICKSTART.read_text())
    base["training"]["output_dir"] = str(tmp_path / "run")
    base["workflow"].update(workflow)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.parametrize("overrides, expected", [
    (["training.algorithm=dpo"], "workflow.type: 'solver_judge' with training.algorithm=dpo"),
    (["workflow.type=solver_jugde"], "did you mean 'solver_judge'?"),
    (["workflow.num_solutions=1"], "workflow.num_solutions: 1 must be at least 2"),
    (["workflow.judge_prompt='{problem} {answers}'"], "workflow.judge_prompt: uses {answers}; the placeholders are"),
    (["workflow.judge_prompt='{problem}'"], "workflow.judge_prompt: has no {solutions}"),
    (["workflow.grouping=episode"], "workflow.grouping"),
    (["training.beta=0.1"], "training.beta: 0.1 with workflow.type 'solver_judge'"),
    (["workflow.type=nowhere_module:Flow"], "workflow.type: no module named 'nowhere_module'"),
    (["workflow.type=single", "workflow.solver_prompt='{prompt}'"], "workflow.solver_prompt: is set but"),
    (["workflow.kwargs={n: 1}"], "workflow.kwargs: {'n': 1} but 'solver_judge' is a built-in workflow"),
    (["training.deepspeed_config=zero2"], "runs in one process (its loop is written here"),
    (["--num-gpus", "0", "--num-processes", "2"], "but this launch asks for 2 processes"),
])
def test_bad_workflow_keys_exit_2_naming_key_value_and_fix(tmp_path, capsys, overrides, expected):
    assert main(["--recipe", str(_recipe(tmp_path)), *overrides]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_module_class_workflow_loads_by_path_and_runs(tmp_path, tokenizer, monkeypatch):
    (tmp_path / "my_flow.py").write_text(
        "from fai_rl.workflows import Episode, Step, Trajectory, render_chat\n"
        "class Echo:\n"
        "    def __init__(self, config, score, max_length, bonus=0.0):\n"
        "        self.score, self.bonus = score, bonus\n"
        "    def run(self, row, sampler):\n"
        "        ids = render_chat(sampler.tokenizer, row['prompt'])\n"
        "        (c,) = sampler.sample([ids], 1)[0]\n"
        "        r = self.score([row], [c.text])[0] + self.bonus\n"
        "        return Episode([Trajectory('solver', [Step.from_completion(ids, c, r)], r, r >= 1)])\n")
    monkeypatch.chdir(tmp_path)
    from fai_rl.backends import algorithm_module, check_dispatch
    from fai_rl.rewards import build_rewards
    from fai_rl.workflows import build_workflow, reward_scorer, run_workflow

    recipe = load_recipe(_recipe(tmp_path), ["workflow.type=my_flow.py:Echo", "workflow.kwargs={bonus: 0.5}"],
                         extra_rules=[check_dispatch])
    assert algorithm_module(recipe).__name__ == "fai_rl.backends.local.workflow"
    workflow = build_workflow(recipe, reward_scorer(build_rewards(recipe)))
    (episode,) = run_workflow(workflow, [DIGIT_ROW], ScriptedSampler(tokenizer, {"7 + 5": ["12"]}))
    assert episode.trajectories[0].reward == 1.5
    with pytest.raises(RecipeError, match="workflow.type: 'my_flow.py' has no 'Missing'; its classes: Echo"):
        load_recipe(_recipe(tmp_path), ["workflow.type=my_flow.py:Missing"], extra_rules=[check_dispatch])


def test_countdown_hub_columns_work_by_name_through_solver_prompt_and_reward_kwargs(tmp_path, capsys):
    # the columns of Jiayi-Pan/Countdown-Tasks-3to4 (target, nums); no hub here, so a local file with them
    data = tmp_path / "countdown.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [{"target": 24, "nums": [2, 3, 4]},
                                                      {"target": 10, "nums": [5, 7, 8, 2]}]))
    recipe = ROOT / "recipes" / "workflows" / "solver_judge_countdown.yaml"
    common = ["--recipe", str(recipe), "--dry-run", "training.backend=local", "model.base_model_name=fai-rl/tiny",
              f"data.datasets[0].name={data}", "data.eval_datasets=[]", "training.eval_steps=null",
              f"training.output_dir={tmp_path / 'run'}"]
    hub = ["workflow.solver_prompt='Using the numbers {nums}, create an equation that equals {target}.'",
           "rewards[0].kwargs.numbers_column=nums"]
    assert main([*common, *hub]) == 0
    out = capsys.readouterr().out
    assert "Using the numbers 2, 3, 4, create an equation that equals 24.. Output the final answer" in out
    assert "--- judge prompt 1" in out and "Solution 1:\\n<solution 1>" in out
    assert "solver prompts longer than data.max_length=2048: 0 of 2" in out
    from fai_rl.rewards.countdown import countdown

    assert countdown(["(2 + 4) * 4"], nums=[[2, 3, 4]], target=[24], numbers_column="nums") == [0.1]
    assert countdown(["2 * 3 * 4"], nums=[[2, 3, 4]], target=[24], numbers_column="nums") == [1.0]
    assert main(common) == 2  # the shipped prompt reads the built-in task's `numbers` column
    assert "workflow.solver_prompt: uses {numbers} but data.datasets[0]" in capsys.readouterr().err


class QueueSampler:
    """A Sampler that hands out scripted texts in order (n per prompt), recording the prompts it was shown."""

    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer, self.texts, self.prompts = tokenizer, list(texts), []

    def sample(self, prompts, n, max_tokens=None, temperature=None):
        self.prompts += [self.tokenizer.decode(ids) for ids in prompts]
        return [[ScriptedSampler._completion(self, self.texts.pop(0)) for _ in range(n)] for _ in prompts]


def rllm_question(nums, target):
    """rLLM's prepare_countdown_data.py question, written out here."""
    return (f"Using the numbers {', '.join(map(str, nums))}, find a way to reach the target number {target}. You can "
            "use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your "
            "step-by-step calculation and output the final answer within <answer>...</answer>, for example "
            "<answer> (1 + 2) / 3 </answer>.")


def rllm_judge_prompt(problem, solutions):
    """rLLM's Judge._create_judge_prompt, written out here."""
    prompt = ("You are an expert verifier. Given a countdown problem and multiple solution attempts, select a correct "
              f"solution.\nProblem:\n{problem}\nSolutions to evaluate:\n")
    for i, solution in enumerate(solutions, 1):
        prompt += f"\nSolution {i}:\n{solution}\n"
    return prompt + (
        "\nA correct solution must satisfy the following criteria:\n1. The solution uses only the given numbers.\n"
        "2. Each number is used exactly once.\n3. Only basic arithmetic operations (+, -, *, /) are used.\n"
        "4. The calculation results in the target number.\n5. The final answer is clearly marked within "
        "<answer>...</answer> tags.\nOutput the index of your selected solution within <answer>...</answer> tags, "
        "e.g., <answer>1</answer> for the first solution, <answer>2</answer> for the second solution, etc. If "
        "multiple solutions are correct, output the index of the first correct solution.")


def test_the_countdown_recipe_prompts_and_scores_as_rllms_solver_judge(tokenizer, capsys):
    from fai_rl.rewards import recipe_rewards
    from fai_rl.workflows import build_workflow, reward_scorer
    from fai_rl.workflows.data import load_workflow_rows

    recipe = load_recipe(ROOT / "recipes" / "workflows" / "solver_judge_countdown.yaml",
                         ["training.backend=local", "model.base_model_name=fai-rl/tiny"])
    assert recipe.training.num_generations == 4 and recipe.training.max_grad_norm == 0
    row = load_workflow_rows(recipe)[0][0]
    nums, target, right = row["numbers"], row["target"], row["answer"]
    wrong = " + ".join(map(str, nums))  # every number once, another value
    assert eval(wrong) != target
    question = rllm_question(nums, target)
    assert row["prompt"] == [{"role": "user", "content": f"{question}. Output the final answer within <answer>...</answer>"}]
    workflow = build_workflow(recipe, reward_scorer(recipe_rewards(recipe)))
    # Per episode: two solver outputs, then (after every solver call) one judge reply. rLLM's values, worked out:
    # countdown_reward_fn(task, Solver._parse_solver_response(text)) is 1 for a right equation in the first tag, 0
    # otherwise (a well-formed miss: compute_score's 0.1 becomes 0; untagged: "No solution found"; "... = target"
    # fails validate_equation); the judge's reward is that of solutions[k - 1] for its first <answer>k</answer>.
    solver_texts = [f"First 2 then 3. <answer>{right}</answer>", f"<answer>{wrong}</answer>",   # 1, 0
                    right, f"<ANSWER>\n{right}\n</ANSWER>",                                     # 0, 1
                    f"<answer>{right} = {target}</answer>", f"<answer>{wrong}</answer> or <answer>{right}</answer>",
                    f"<answer>{right}</answer>", f"<answer>{right}</answer>"]                  # 1, 1
    judge_texts = ["<answer>1</answer>", "<answer>2</answer>, no: <answer>1</answer>", "<answer>1</answer>", "1"]
    sampler = QueueSampler(tokenizer, solver_texts + judge_texts)
    episodes = workflow.run_batch([row] * 4, sampler)
    assert [[t.reward for t in e.role("solver")] for e in episodes] == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert [e.role("judge")[0].reward for e in episodes] == [1.0, 1.0, 0.0, 0.0]
    assert [e.metrics["judge_valid_pick"] for e in episodes] == [1.0, 1.0, 1.0, 0.0]
    # the judge sees rLLM's problem (no solver instruction) and the extracted answers, not the completions
    judge_seen = sampler.prompts[4:]
    assert rllm_judge_prompt(question, [f"<answer>{right}</answer>", f"<answer>{wrong}</answer>"]) in judge_seen[0]
    assert rllm_judge_prompt(question, ["No solution found", f"<answer>{right}</answer>"]) in judge_seen[1]
    assert rllm_judge_prompt(question, [f"<answer>{right} = {target}</answer>", f"<answer>{wrong}</answer>"]) in judge_seen[2]
    assert all(e.metrics["truncated_prompts"] == 0 for e in episodes)
    # a prompt over data.max_length is cut from the left, counted (prompts and tokens dropped) and said, never silently
    short = type(workflow)(recipe.workflow, workflow.score, max_length=24)
    sampler = QueueSampler(tokenizer, solver_texts[:4] + judge_texts[:2])
    cut = short.run_batch([row] * 2, sampler)
    tags = recipe.workflow.answer_tags
    full = [[len(render_chat(tokenizer, row["prompt"])), len(render_chat(tokenizer, short.judge_messages(
        row, [extract_answer(t, tags) for t in solver_texts[i : i + 2]])))] for i in (0, 2)]
    assert min(map(min, full)) > 24
    assert [e.metrics["truncated_prompts"] for e in cut] == [2.0, 2.0]
    assert [e.metrics["truncated_prompt_tokens"] for e in cut] == [sum(f) - 48 for f in full]
    assert rollout_metrics(cut)["truncated_prompts"] == 4.0  # a step's count is the sum over its episodes
    assert (short.cuts.run.rows, short.cuts.run.seen) == (4, 4)
    report_truncations(short)
    printed = capsys.readouterr().out
    assert re.search(r"note: 4 of 4 prompts the workflow rendered \(train and eval\) longer than data.max_length=24 "
                     r"tokens were cut from the left \(\d+ tokens dropped; .*raise data.max_length", printed)


# ---------------------------------------------------------------- end to end: the quickstart learns


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def evals(out, key):
    return [r[key] for r in metrics(out) if key in r]


@pytest.mark.slow
def test_the_quickstart_trains_both_roles_and_the_judge_learns_to_pick_locally(tmp_path):
    out = tmp_path / "local"
    assert main(["--recipe", str(QUICKSTART), f"training.output_dir={out}"]) == 0
    judge, solver = evals(out, "eval_judge_accuracy"), evals(out, "eval_solver_pass@1")
    assert len(judge) == 2 and judge[-1] > judge[0] + 0.25, judge  # 3 seeds: +0.42 to +0.57
    assert solver[-1] > solver[0] - 0.05, solver  # the solver is not sacrificed to the judge
    train = [r for r in metrics(out) if "reward/judge" in r]
    assert train[-1]["reward/judge"] > train[0]["reward/judge"] and all("reward/solver" in r for r in train)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workflow"] == "solver_judge" and summary["global_step"] == 30
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() > 0
    print(f"\nsolver-judge quickstart (local): solver pass@1 {solver[0]:.3f} -> {solver[-1]:.3f}, judge accuracy "
          f"{judge[0]:.3f} -> {judge[-1]:.3f}, train {summary['train_runtime_s']} s")
    # fai-rl-eval runs the same workflow on the held-out problems, the trained model beside its start
    from fai_rl.cli.eval import main as evaluate

    assert evaluate(["--recipe", str(ROOT / "recipes/eval/solver_judge.yaml"), f"evaluation.models=[{out}]"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())["tasks"]["digits-solver-judge"]
    delta = results["delta"][str(out)]
    assert delta["solver+judge"]["pass@1"] > 0.1 and delta["judge_accuracy"]["mean"] > 0.2, delta
    trained = results["results"][str(out)]
    assert trained["solver"]["pass@8"] >= trained["solver"]["pass@1"]
    lines = (out / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 40 * 8 and {t["role"] for t in json.loads(lines[0])["trajectories"]} == {"solver", "judge"}


@pytest.mark.tinker
@pytest.mark.slow
def test_the_quickstart_trains_both_roles_on_the_tinker_server(tmp_path, tinker_env):
    # A smoke run (2 steps): that the workflow samples, scores and updates through the service. Learning is asserted
    # on the local backend above; the Tinker update path is tinker/grpo.py's, whose own test asserts learning. Run
    # longer (10 steps, 16 episodes, lr 2e-3 on 8 problems) it moved solver pass@1 0.44 -> 0.63 and 0.28 -> 0.56.
    out = tmp_path / "tinker"
    args = ["--recipe", str(QUICKSTART), "training.backend=tinker", f"tinker.base_url={tinker_env.base_url}",
            "tinker.lora_rank=8", "tinker.download_final=false", f"training.output_dir={out}",
            "training.learning_rate=2e-3", "training.max_steps=2", "training.per_device_train_batch_size=16",
            "training.logging_steps=1", "data.datasets[0].max_samples=8", "data.eval_datasets=[]",
            "tinker.save_every=1", "training.drop_zero_variance_groups=true"]
    assert main(args) == 0
    rows = [r for r in metrics(out) if "reward/judge" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["reward/solver"] <= 1 and 0 <= r["reward/judge"] <= 1 and r["step_time_s"] > 0 for r in rows)
    assert all(0 <= r["groups_dropped"] <= 2 * 16 for r in rows)  # flat groups per task and role left out
    assert all(r["off_policy_steps"] == 0 for r in rows)  # tinker.max_steps_off_policy 0: on-policy
    # the RL driver's metrics through the shared update path, and a transcript of both roles at step 1
    assert all(abs(r["kl_sample_train"]) < 0.01 and r["time/sample"] > 0 and r["time/train"] > 0 and "loss" in r
               for r in rows)
    shown = [json.loads(line) for line in (out / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    assert {r["role"] for r in shown} <= {"solver", "judge"} and all("advantage" in r for r in shown)
    listed = json.loads((out / "checkpoints.json").read_text())["checkpoints"]
    assert listed[-1]["kind"] == "sampler" and listed[-1]["path"].startswith("tinker://")
    assert json.loads((out / "summary.json").read_text())["workflow"] == "solver_judge"
    # --resume from the state at 1: sampling is seeded per step, so step 2 is the uninterrupted run's
    state = next(c["path"] for c in listed if c["kind"] == "state" and c["step"] == 1)
    assert main([*args, "--resume", state]) == 0
    again = [r for r in metrics(out) if "reward/judge" in r]
    assert [r["step"] for r in again] == [1, 2]
    for got, want in zip(again, rows):
        values = {k: v for k, v in want.items() if "time" not in k}
        assert {k: got[k] for k in values} == pytest.approx(values, rel=1e-4, abs=1e-4), got["step"]


@pytest.mark.tinker
@pytest.mark.slow
def test_the_tinker_workflow_loop_samples_the_next_step_while_this_one_trains(tmp_path, tinker_env):
    # tinker.max_steps_off_policy 1: step N+1's episodes run on the weights before step N's update (one step stale,
    # recorded per sample and corrected by the importance ratio the loss already uses)
    out = tmp_path / "off-policy"
    assert main(["--recipe", str(QUICKSTART), "training.backend=tinker", f"tinker.base_url={tinker_env.base_url}",
                 "tinker.lora_rank=8", "tinker.download_final=false", f"training.output_dir={out}",
                 "training.max_steps=3", "training.per_device_train_batch_size=8", "training.logging_steps=1",
                 "data.datasets[0].max_samples=8", "data.eval_datasets=[]", "tinker.max_steps_off_policy=1",
                 "training.log_rollouts_every=1"]) == 0
    rows = [r for r in metrics(out) if "reward/judge" in r]
    assert [r["off_policy_steps"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(abs(r["kl_sample_train"]) < 0.1 and "loss" in r for r in rows), rows
    for step, staleness in ((1, 0), (3, 1)):
        shown = [json.loads(line) for line in (out / "rollouts" / f"step-{step}.jsonl").read_text().splitlines()]
        assert {r["staleness"] for r in shown} == {staleness}


@pytest.mark.parametrize("override, expected", [
    ("evaluation.tasks[0].workflow_recipe=null", "evaluation.tasks[0].workflow_recipe: is null; name the training"),
    ("evaluation.tasks[0].workflow_recipe=recipes/nope.yaml", "'recipes/nope.yaml' does not load"),
    ("evaluation.tasks[0].rewards=[{function: exact_match}]", "scored by the rewards of its workflow_recipe"),
])
def test_bad_workflow_eval_tasks_exit_2_naming_the_key(tmp_path, capsys, override, expected):
    from fai_rl.cli.eval import main as evaluate

    out = tmp_path / "eval"
    assert evaluate(["--recipe", str(ROOT / "recipes/eval/solver_judge.yaml"), override,
                     f"evaluation.output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not out.exists()
