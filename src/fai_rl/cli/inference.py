"""`fai-rl-inference`: FAI-RL's inference recipes, unchanged (`inference:` with model_paths or model, or an API model
through api_endpoint + model; dataset_name, dataset_columns, system_prompt / user_prompt templates).

    fai-rl-inference --recipe recipes/inference/llama3_3B.yaml [--dry-run] [--nohup] [temperature=0 max_new_tokens=64]

Overrides are FAI-RL's bare `key=value` or dotted `inference.key=value`. Writes output_file (CSV in FAI-RL's format,
or .jsonl) atomically, and <stem>_summary.json. API keys come from the environment only (fai_rl.inference.api). A bad
recipe is one message and exit 2; rows an API failed on after its retries are listed, the rest written, exit 1.
"""

from __future__ import annotations

import argparse
import sys

from fai_rl.cli import report_errors


def build_parser(prog: str = "fai-rl-inference") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a FAI-RL inference recipe (local models or an API).")
    p.add_argument("--recipe", required=True, help="FAI-RL inference recipe YAML")
    p.add_argument("--dry-run", action="store_true", help="check recipe, data, templates and models; generate nothing")
    p.add_argument("--nohup", action="store_true", help="run detached; log under logs/ next to output_file")
    p.add_argument("--debug", action="store_true", help="accepted for FAI-RL compatibility (prints the plan)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (CLI > recipe > defaults)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-inference; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_intermixed_args(argv)
    return report_errors("fai-rl-inference", lambda: run_fairl(args, argv, "inference"), "output not written")


def run_fairl(args: argparse.Namespace, argv: list[str], section: str) -> int:
    """Load, check, and run (or detach, or only check) a FAI-RL `inference:` or `evaluation:` recipe."""
    from fai_rl.config.load_fairl_infer import load_fairl_recipe
    from fai_rl.inference.recipes import check_recipe, run_eval_recipe, run_inference_recipe

    c = getattr(load_fairl_recipe(args.recipe, args.overrides, section), section)
    if args.dry_run or args.debug:
        _, lines = check_recipe(c, section)
        print("recipe OK (FAI-RL " + section + " recipe)\n  " + "\n  ".join(lines), flush=True)
        if args.dry_run:
            print(f"\ndry run: nothing {'generated' if section == 'inference' else 'evaluated'}.")
            return 0
    if args.nohup:
        return _detach(c, argv, section)
    return (run_inference_recipe if section == "inference" else run_eval_recipe)(c, lambda s: print(s, flush=True))


def _detach(c, argv: list[str], section: str) -> int:
    import subprocess
    import time
    from pathlib import Path

    logs = Path(c.output_file).expanduser().resolve().parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{section}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    module = "fai_rl.cli.inference" if section == "inference" else "fai_rl.cli.eval"
    with open(log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", module, *[a for a in argv if a != "--nohup"]],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    print(f"started in the background (pid {child.pid})\n  log:    {log}\n  follow: tail -f {log}\n"
          f"  stop:   kill {child.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
