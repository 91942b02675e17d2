"""The evaluation loop of fai-rl-eval: every model (and the baseline) on every task, then two files and a table.

    output_dir/results.json    per task: each model's metrics (mean and pass@k), the baseline's, and the differences
    output_dir/samples.jsonl   one line per sampled answer (or scored multiple-choice question), with its scores

Everything that can be wrong with a recipe (models that do not resolve, data without the named columns, rewards
that do not import) is found before the first model loads; the files are written at the end, each through a
temporary file renamed into place, so a failed or interrupted evaluation leaves no half-written results.

Task types dispatch through TASK_TYPES: a new kind of task is one function `(sampler, task, examples, seed) ->
TaskResult` and one entry there (and in config.schema.EVAL_TASK_TYPES); `workflow` runs a fai_rl.workflows workflow.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from fai_rl.config.load import recipe_to_dict
from fai_rl.config.schema import EvalRecipe, EvalTaskConfig
from fai_rl.errors import DataError, RecipeError, UsageError
from fai_rl.evaluation.metrics import mean_pass_at_k, parse_letter, score_generations
from fai_rl.evaluation.samplers import Sampler, open_sampler, render_chat
from fai_rl.evaluation.tasks import Example, load_examples
from fai_rl.models.source import ModelSource, resolve_model_source


@dataclass
class TaskResult:
    """One model on one task: metric -> {"mean": ..., "pass@k": ...}, and one record per sample."""

    metrics: dict[str, dict[str, float]]
    samples: list[dict]


@dataclass
class Plan:
    """A checked recipe, ready to run: resolved models (baseline last), loaded examples, where results go."""

    recipe: EvalRecipe
    models: list[tuple[str, ModelSource]]  # (label, source)
    baseline: str | None  # label of the baseline among models
    examples: dict[str, list[Example]]  # task name -> examples
    output_dir: Path


def plan_evaluation(recipe: EvalRecipe) -> Plan:
    """Resolve every model, load every task's data, pick the output dir; RecipeError/DataError listing all problems."""
    e = recipe.evaluation
    problems: list[str] = []
    models: list[tuple[str, ModelSource]] = []
    named = [(f"evaluation.models[{i}]", spec) for i, spec in enumerate(e.models)]
    if e.baseline is not None:
        named.append(("evaluation.baseline", e.baseline))
    labels: set[str] = set()
    for key, spec in named:
        try:
            source = resolve_model_source(spec, what=key, base_model=e.base_model)
        except UsageError as err:
            problems.append(str(err))
            continue
        label = spec if spec not in labels else f"{spec}#{len(models) + 1}"
        labels.add(label)
        models.append((label, source))
    if problems:
        raise RecipeError(problems)
    examples: dict[str, list[Example]] = {}
    data_problems: list[str] = []
    for i, task in enumerate(e.tasks):
        try:
            examples[task.name] = load_examples(task, f"evaluation.tasks[{i}]")
        except DataError as err:
            data_problems += err.problems
    if data_problems:
        raise DataError(data_problems)
    if e.output_dir is not None:
        output_dir = Path(e.output_dir)
    elif models[0][1].run_dir is not None:
        output_dir = models[0][1].run_dir / "eval"
    else:
        raise RecipeError(f"evaluation.output_dir: null, and evaluation.models[0] ('{e.models[0]}') is not a run dir "
                          "to put eval/ in; set evaluation.output_dir=DIR.")
    if output_dir.exists() and not output_dir.is_dir():
        raise RecipeError(f"evaluation.output_dir: '{output_dir}' is a file; name a directory.")
    baseline = models[-1][0] if e.baseline is not None else None
    return Plan(recipe, models, baseline, examples, output_dir)


def describe_plan(plan: Plan) -> str:
    """What --dry-run prints: the models, each task's size and its first rendered prompt (no model loaded)."""
    lines = ["# models"]
    for label, source in plan.models:
        role = " (baseline)" if label == plan.baseline else ""
        lines.append(f"  {source.describe()}{role}")
    lines.append("# tasks")
    for task in plan.recipe.evaluation.tasks:
        ex = plan.examples[task.name]
        scored = ", ".join([*task.metrics, *(f"reward/{r.function}" for r in task.rewards)])
        lines.append(f"  {task.name}: {task.type}, {len(ex)} prompts x {task.num_samples} samples, "
                     f"temperature {task.temperature:g}; {scored}; pass@{task.pass_k}")
        lines.append(f"    first prompt: {ex[0].messages[-1]['content']!r}; reference {ex[0].reference!r}")
    lines.append(f"# results go to {plan.output_dir}/results.json and samples.jsonl")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Task types


def evaluate_generate(sampler: Sampler, task: EvalTaskConfig, examples: list[Example], seed: int) -> TaskResult:
    """Sample num_samples answers per prompt; score each with the metrics and rewards; mean and pass@k of each."""
    prompts = [render_chat(sampler.tokenizer, ex.messages, chat_template=task.chat_template) for ex in examples]
    groups = sampler.generate(prompts, n=task.num_samples, temperature=task.temperature, top_p=task.top_p,
                              max_new_tokens=task.max_new_tokens, seed=seed)
    flat = [(ex, j, c) for ex, group in zip(examples, groups, strict=True) for j, c in enumerate(group)]
    texts = [c.text for _, _, c in flat]
    scores: dict[str, list[float | None]] = {}
    for metric in task.metrics:
        scores[metric] = score_generations(metric, texts, [ex.reference for ex, _, _ in flat], task.numeric_tolerance)
    if task.rewards:
        from fai_rl.rewards import build_rewards, score_rewards

        fns = build_rewards(SimpleNamespace(rewards=task.rewards))
        _, per_fn = score_rewards(fns, [ex.messages for ex, _, _ in flat], texts, [ex.columns for ex, _, _ in flat])
        scores.update({f"reward/{name}": values for name, values in per_fn.items()})
    samples = [{
        "index": ex.index, "sample": j, "prompt": ex.messages[-1]["content"], "reference": ex.reference,
        "completion": c.text, "stopped": c.stopped, "num_tokens": len(c.tokens),
        "scores": {name: values[k] for name, values in scores.items()},
    } for k, (ex, j, c) in enumerate(flat)]
    return TaskResult(_aggregate(scores, examples, task), samples)


def evaluate_multiple_choice(sampler: Sampler, task: EvalTaskConfig, examples: list[Example],
                             seed: int) -> TaskResult:
    """Pick a choice per question, by the highest log-likelihood of its text or by a generated letter; accuracy."""
    if task.multiple_choice_mode == "generate":
        prompts = [render_chat(sampler.tokenizer, ex.messages, chat_template=task.chat_template) for ex in examples]
        groups = sampler.generate(prompts, n=task.num_samples, temperature=task.temperature, top_p=task.top_p,
                                  max_new_tokens=task.max_new_tokens, seed=seed)
        picks = [[(parse_letter(c.text, len(ex.choices)), c.text, None) for c in group]
                 for ex, group in zip(examples, groups, strict=True)]
    else:
        picks = []
        for ex in examples:
            prompt = render_chat(sampler.tokenizer, ex.messages, chat_template=task.chat_template)
            space = "" if task.chat_template else " "  # a plain-text continuation starts after a space
            conts = [sampler.tokenizer(space + c, add_special_tokens=False)["input_ids"] for c in ex.choices]
            logprobs = sampler.score_continuations(prompt, conts)
            if task.length_normalize:
                logprobs = [lp / max(1, len(c)) for lp, c in zip(logprobs, conts, strict=True)]
            best = max(range(len(logprobs)), key=logprobs.__getitem__)
            picks.append([(best, ex.choices[best], logprobs)])
    scores: dict[str, list[float | None]] = {"accuracy": []}
    samples = []
    for ex, group in zip(examples, picks, strict=True):
        for j, (pick, text, logprobs) in enumerate(group):
            scores["accuracy"].append(float(pick == ex.correct))
            samples.append({
                "index": ex.index, "sample": j, "prompt": ex.messages[-1]["content"], "choices": ex.choices,
                "reference": ex.choices[ex.correct], "prediction": None if pick is None else ex.choices[pick],
                "completion": text, "scores": {"accuracy": float(pick == ex.correct)},
                **({"choice_logprobs": [round(x, 4) for x in logprobs]} if logprobs is not None else {}),
            })
    return TaskResult(_aggregate(scores, examples, task), samples)


def evaluate_workflow_task(sampler: Sampler, task: EvalTaskConfig, examples: list[Example], seed: int) -> TaskResult:
    """Run the workflow of task.workflow_recipe num_samples times per prompt (fai_rl.workflows); its metrics, with
    `solver` and `solver+judge` as correct-answer rates with pass@k, and one sample record per trajectory."""
    import torch

    from fai_rl.config.load import load_recipe
    from fai_rl.rewards import build_rewards
    from fai_rl.workflows import build_workflow, reward_scorer, run_workflow, summarize_episodes

    recipe = load_recipe(task.workflow_recipe)
    workflow = build_workflow(recipe, reward_scorer(build_rewards(recipe)))
    template = recipe.workflow.solver_prompt
    rows = [{**ex.columns, "prompt": [{"role": "user", "content": template.format(**ex.columns)}] if template
             else ex.messages} for ex in examples]
    torch.manual_seed(seed)
    n = task.num_samples
    episodes = run_workflow(workflow, [row for row in rows for _ in range(n)], _WorkflowSampler(sampler, task, seed))
    by_task = [episodes[i * n : (i + 1) * n] for i in range(len(rows))]
    flat: dict[str, float] = {}
    for k in task.pass_k:
        flat.update(summarize_episodes(by_task, k))
    metrics: dict[str, dict[str, float]] = {}
    for name, value in flat.items():
        role, _, stat = name.partition("_pass@")
        if stat:  # solver_pass@k / judge_pass@k: the solver alone, and the judge's pick (solver + judge)
            metrics.setdefault("solver" if role == "solver" else "solver+judge", {})[f"pass@{stat}"] = value
        else:
            metrics[name] = {"mean": value}
    for stats in metrics.values():
        stats.setdefault("mean", stats.get("pass@1", float("nan")))
    samples = [{"index": ex.index, "sample": j, "prompt": rows[i]["prompt"][-1]["content"], "reference": ex.reference,
                "trajectories": [{"role": t.name, "reward": t.reward, "correct": t.correct,
                                  "completions": [step.text for step in t.steps]} for t in episode.trajectories]}
               for i, (ex, group) in enumerate(zip(examples, by_task, strict=True)) for j, episode in enumerate(group)]
    return TaskResult(metrics, samples)


class _WorkflowSampler:
    """An eval Sampler seen through the workflows' Sampler interface, with the task's sampling settings."""

    def __init__(self, sampler: Sampler, task: EvalTaskConfig, seed: int):
        self.sampler, self.task, self.seed, self.tokenizer = sampler, task, seed, sampler.tokenizer
        self.calls = 0

    def sample(self, prompts, n, max_tokens=None, temperature=None):
        self.calls += 1  # a new seed per call: the solver and judge stages must not replay the same random stream
        return self.sampler.generate(prompts, n=n, temperature=self.task.temperature if temperature is None
                                     else temperature, top_p=self.task.top_p,
                                     max_new_tokens=max_tokens or self.task.max_new_tokens,
                                     seed=self.seed + self.calls)


# The one dispatch from evaluation.tasks[].type to what runs it.
TASK_TYPES: dict[str, Callable[[Sampler, EvalTaskConfig, list[Example], int], TaskResult]] = {
    "generate": evaluate_generate,
    "multiple_choice": evaluate_multiple_choice,
    "workflow": evaluate_workflow_task,
}


def _aggregate(scores: dict[str, list[float | None]], examples: list[Example], task: EvalTaskConfig) -> dict:
    """metric -> mean over every sample (None skipped) and pass@k over prompts (correct: score >= pass_threshold)."""
    out = {}
    n_prompts = len(examples)
    for name, values in scores.items():
        per_prompt = len(values) // n_prompts
        given = [v for v in values if v is not None]
        stats = {"mean": sum(given) / len(given) if given else float("nan")}
        counts = [(per_prompt, sum(1 for v in values[i * per_prompt:(i + 1) * per_prompt]
                                   if v is not None and v >= task.pass_threshold)) for i in range(n_prompts)]
        for k in task.pass_k:
            if k <= per_prompt:
                stats[f"pass@{k}"] = mean_pass_at_k(counts, k)
        out[name] = stats
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The run


def run_evaluation(plan: Plan, log: Callable[[str], None] = print) -> dict:
    """Evaluate every model of the plan on every task; write results.json + samples.jsonl; return the results."""
    e = plan.recipe.evaluation
    began = time.time()
    per_model: dict[str, dict[str, TaskResult]] = {}
    for label, source in plan.models:
        sampler = open_sampler(source, device=e.device, dtype=e.dtype, batch_size=e.batch_size,
                               tinker_base_url=e.tinker_base_url, request_timeout_s=e.request_timeout_s)
        per_model[label] = {}
        for task in e.tasks:
            start = time.time()
            examples = plan.examples[task.name]
            per_model[label][task.name] = TASK_TYPES[task.type](sampler, task, examples, e.seed)
            log(f"evaluated {label} on {task.name}: {len(examples)} prompts x {task.num_samples} samples "
                f"in {time.time() - start:.1f} s")
        del sampler  # one model in memory at a time
        gc.collect()
        _empty_gpu_cache()
    results = _results(plan, per_model, time.time() - began)
    _write(plan, per_model, results)
    log(format_table(results))
    log(f"results in {plan.output_dir}: results.json, samples.jsonl")
    return results


def _empty_gpu_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # only when a local model brought torch in
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _results(plan: Plan, per_model: dict[str, dict[str, TaskResult]], wall: float) -> dict:
    e = plan.recipe.evaluation
    tasks = {}
    for task in e.tasks:
        entry = {
            "type": task.type, "dataset": f"{task.dataset.name}[{task.dataset.split}]",
            "num_examples": len(plan.examples[task.name]), "num_samples": task.num_samples,
            "temperature": task.temperature, "pass_k": task.pass_k,
            "results": {label: per_model[label][task.name].metrics for label, _ in plan.models},
        }
        if plan.baseline is not None:
            base = entry["results"][plan.baseline]
            entry["delta"] = {
                label: {m: {s: v - base[m][s] for s, v in stats.items()}
                        for m, stats in entry["results"][label].items()}
                for label, _ in plan.models if label != plan.baseline
            }
        tasks[task.name] = entry
    return {
        "models": [{"label": label, "spec": s.spec, "kind": s.kind, "source": s.describe(),
                    "role": "baseline" if label == plan.baseline else "model"} for label, s in plan.models],
        "baseline": plan.baseline,
        "tasks": tasks,
        "wall_time_s": round(wall, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "recipe": recipe_to_dict(plan.recipe),
    }


def _write(plan: Plan, per_model: dict[str, dict[str, TaskResult]], results: dict) -> None:
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, tasks in per_model.items():
        for name, result in tasks.items():
            lines += [json.dumps({"model": label, "task": name, **s}, ensure_ascii=False) for s in result.samples]
    _atomic_write(plan.output_dir / "samples.jsonl", "\n".join(lines) + "\n")
    _atomic_write(plan.output_dir / "results.json", json.dumps(results, indent=2, allow_nan=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def format_table(results: dict) -> str:
    """Each task x metric (mean, then pass@k for k > 1) x model, the baseline, and each model's difference."""
    labels = [m["label"] for m in results["models"] if m["role"] == "model"]
    baseline = results["baseline"]
    header = ["task", "metric", *labels]
    if baseline is not None:
        header += [f"{baseline} (baseline)", *(("delta",) if len(labels) == 1 else (f"delta {lb}" for lb in labels))]
    rows = [header]
    for name, task in results["tasks"].items():
        first = task["results"][labels[0]]
        for metric, stats in first.items():
            keys = ["mean"] + [k for k in stats if k.startswith("pass@") and k != "pass@1"]
            for stat in keys:
                shown = metric if stat == "mean" else f"{metric} {stat}"
                row = [name, shown, *(_num(task["results"][lb][metric][stat]) for lb in labels)]
                if baseline is not None:
                    row.append(_num(task["results"][baseline][metric][stat]))
                    row += [_num(task["delta"][lb][metric][stat], signed=True) for lb in labels]
                rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _num(value: float, signed: bool = False) -> str:
    return f"{value:+.4f}" if signed else f"{value:.4f}"
