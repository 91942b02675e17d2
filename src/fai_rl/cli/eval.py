"""`fai-rl-eval`: evaluate trained models (and a baseline) from an evaluation recipe.

    fai-rl-eval --recipe recipes/eval/quickstart.yaml [--dry-run] [evaluation.models=[runs/x] ...]

Same recipe machinery as fai-rl-train (typed schema, `key.sub=value` overrides, every problem named by its key and
line). Writes results.json and samples.jsonl into evaluation.output_dir (default <run dir>/eval) and prints a table.
Any FaiRLError is one message on stderr and exit code 2, with nothing written. FAI-RL's evaluation recipes
(`evaluation:` with model_paths / dataset_name / output_file, no tasks) are recognised by their keys and run as FAI-RL
runs them (fai_rl.inference.recipes: MMLU / GSM8K accuracy per model, CSV output).
"""

from __future__ import annotations

import argparse
import sys

from fai_rl.cli import report_errors



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fai-rl-eval",
        description="Evaluate models (run dirs, checkpoints, adapters, hub ids, tinker:// paths) on the tasks of an "
        "evaluation recipe; results.json, samples.jsonl and a table, with a baseline side by side.",
        epilog="Overrides: key.sub=value with YAML values, e.g. evaluation.models=[runs/grpo] "
        "evaluation.baseline=fai-rl/tiny-sft evaluation.tasks[0].num_samples=8",
    )
    p.add_argument("--recipe", required=True, help="path of the evaluation recipe YAML (see recipes/eval/)")
    p.add_argument("--dry-run", action="store_true", help="check the recipe, models and data; evaluate nothing")
    p.add_argument("--nohup", action="store_true", help="FAI-RL evaluation recipes: run detached (log beside "
                   "output_file)")
    p.add_argument("--debug", action="store_true", help="FAI-RL evaluation recipes: print the plan first")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides (CLI > recipe > defaults)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-eval; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)
    from fai_rl.config.load_fairl_infer import is_fairl_eval_recipe

    if is_fairl_eval_recipe(args.recipe):  # FAI-RL's layout (model_paths, dataset_name, output_file): its own path
        from fai_rl.cli.inference import run_fairl

        return report_errors("fai-rl-eval", lambda: run_fairl(args, argv, "evaluation"), "nothing written")
    return report_errors("fai-rl-eval", lambda: _run(args), "nothing written")


def _run(args: argparse.Namespace) -> int:
    from fai_rl.config.load import load_eval_recipe, recipe_to_yaml
    from fai_rl.evaluation.run import describe_plan, plan_evaluation, run_evaluation
    from fai_rl.evaluation.tasks import check_eval_rewards

    if args.nohup:
        from fai_rl.errors import UsageError

        raise UsageError("--nohup is for FAI-RL evaluation recipes; run this one under nohup/tmux yourself.")
    recipe = load_eval_recipe(args.recipe, args.overrides, extra_rules=[check_eval_rewards])
    plan = plan_evaluation(recipe)
    if args.dry_run:
        print("recipe OK\n\n# resolved recipe\n" + recipe_to_yaml(recipe))
        print(describe_plan(plan) + "\n\ndry run: nothing evaluated.")
        return 0
    print(describe_plan(plan), flush=True)
    run_evaluation(plan, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
