"""Running a loaded FAI-RL inference or evaluation recipe: check (what --dry-run does), infer, score, write.

Files, as FAI-RL writes them: output_file (the inference rows), output_file's stem + `_summary.json` for inference;
for evaluation also stem + `-eval.csv` (dataset columns, [checkpoint], prediction, ground_truth, correct per row) and
stem + `-eval-summary.json` (metrics per model). Rows an API failed on are left out of the output and listed.
"""

from __future__ import annotations

import json
from pathlib import Path

from fai_rl.errors import UsageError
from fai_rl.inference.run import (load_rows, model_names, output_columns, run_pass, sampling_knobs, write_atomic,
                                  write_rows)


def check_recipe(c, what: str) -> tuple[list[dict], list[str]]:
    """(the dataset rows, plan lines): the data loads, has the columns, fills the templates; the models resolve; an
    API has its key and SDK. Loads no model and sends nothing."""
    from fai_rl.inference.run import conversations
    from fai_rl.inference.scoring import task_of

    rows = load_rows(c, what)
    task, note = task_of(c) if what == "evaluation" else (None, None)
    convs = conversations(c, rows, what, mmlu=task == "mmlu")
    lines = [f"data: {c.dataset_name} ({len(rows)} rows), columns {list(c.dataset_columns)}"]
    if c.api_endpoint:
        from fai_rl.inference.api import api_key_for, provider_of

        provider = provider_of(c.api_endpoint)
        api_key_for(provider, c.api_endpoint)
        lines.append(f"model: {c.model} through {c.api_endpoint} ({provider} API, up to {c.api_max_retries} retries, "
                     f"{c.api_concurrency} requests at a time)")
    else:
        from fai_rl.models.source import resolve_model_source

        for name in model_names(c):
            source = resolve_model_source(name, what=f"{what}.model_paths" if c.model_paths else f"{what}.model")
            if source.kind == "tinker":
                raise UsageError(f"{what}: {name} is a Tinker path; give a local model or an api_endpoint.")
            lines.append(f"model: {source.describe()}")
    k = sampling_knobs(c)
    mode = "chat (system + user turns, chat template)" if c.user_prompt else "flat (the filled system_prompt as is)"
    drawn = "greedy" if k["temperature"] == 0 else f"temperature {k['temperature']}, top_p {k['top_p']}"
    first = json.dumps(convs[0], ensure_ascii=False)[:300] if convs else "(no rows)"
    lines += [f"prompts: {mode}; first: {first}", f"sampling: {drawn}, up to {k['max_tokens']} new tokens",
              f"output: {c.output_file}"]
    if task:
        lines.append(f"scoring: {task} ({c.ground_truth_column} vs the extracted answer; accuracy per model)")
    if note:
        lines.append(f"note: {note}")
    return rows, lines


def _stem(c) -> str:
    return str(Path(c.output_file).expanduser().with_suffix(""))


def _report_failures(result, log) -> int:
    failed = sum(len(f) for f in result.failed.values())
    for name, rows in result.failed.items():
        for i, why in sorted(rows.items()):
            log(f"failed: {name} row {i}: {why}")
    return failed


def run_inference_recipe(c, log=print) -> int:
    """The inference pass of an `inference:` recipe; returns 1 when rows failed (they are listed), else 0."""
    rows, _ = check_recipe(c, "inference")
    result = run_pass(c, rows, "inference", log)
    out = write_rows(c.output_file, result.rows, output_columns(c))
    failed = _report_failures(result, log)
    summary = {"total_examples": len(rows), "num_checkpoints": len(model_names(c)),
               "total_expected_results": len(rows) * len(model_names(c)), "successful_examples": len(result.rows),
               "failed_examples": failed, "failed_rows": {n: sorted(f) for n, f in result.failed.items()},
               "inference_type": "api" if c.api_endpoint else "local", "model_info": model_names(c),
               "dataset_name": c.dataset_name, "dataset_columns_used": list(c.dataset_columns)}
    write_atomic(Path(_stem(c) + "_summary.json"), json.dumps(summary, indent=2, ensure_ascii=False))
    log(f"{len(result.rows)} rows in {out}" + (f"; {failed} failed (listed above)" if failed else ""))
    return 1 if failed else 0


def run_eval_recipe(c, log=print) -> int:
    """Inference, then FAI-RL's scoring per model; returns 1 when rows failed (scored as no answer), else 0."""
    from fai_rl.inference.scoring import score, task_of

    rows, _ = check_recipe(c, "evaluation")
    task, note = task_of(c)
    if note:
        log(f"note: {note}")
    if rows and c.ground_truth_column not in rows[0]:
        raise UsageError(f"evaluation.ground_truth_column: '{c.ground_truth_column}' not in {c.dataset_name} (its "
                         f"columns: {sorted(rows[0])}).")
    result = run_pass(c, rows, "evaluation", log, mmlu=task == "mmlu")
    write_rows(c.output_file, result.rows, output_columns(c))
    failed = _report_failures(result, log)
    truths = [r.get(c.ground_truth_column) for r in rows]
    names = model_names(c)
    metrics, detailed = {}, []
    for name in names:
        m, scored = score(task, result.responses[name], truths, c.choice_labels)
        metrics[name] = m
        for row, s in zip(rows, scored, strict=True):
            detailed.append({**{col: row.get(col) for col in c.dataset_columns},
                             **({c.checkpoint_column: name} if len(names) > 1 else {}), **s})
        log(f"{name}: accuracy {m['overall_accuracy']:.4f} ({m['correct_predictions']}/{m['total_examples']}), "
            f"valid accuracy {m['valid_accuracy']:.4f}, extraction {m['extraction_success_rate']:.4f}")
    write_rows(_stem(c) + "-eval.csv", detailed)
    summary = {"evaluation_dataset": c.dataset_name, "evaluation_split": c.dataset_split, "task": task,
               "ground_truth_column": c.ground_truth_column, "dataset_columns": list(c.dataset_columns),
               "system_prompt": c.system_prompt, "metrics": metrics if len(names) > 1 else metrics[names[0]],
               "failed_rows": {n: sorted(f) for n, f in result.failed.items()}}
    write_atomic(Path(_stem(c) + "-eval-summary.json"), json.dumps(summary, indent=2, ensure_ascii=False,
                                                                   default=str))
    log(f"results: {c.output_file}, {_stem(c)}-eval.csv, {_stem(c)}-eval-summary.json")
    return 1 if failed else 0
