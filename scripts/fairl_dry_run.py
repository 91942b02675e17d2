#!/usr/bin/env python3
"""Dry-run Roblox FAI-RL's own training recipes through fai-rl-train, unchanged but for what cannot exist here.

    python scripts/fairl_dry_run.py PATH_TO_FAI_RL/recipes/training [more dirs or .yaml files] [--num-gpus N]

Each recipe is copied with only its hub model ids, hub dataset ids, s3:// paths, local data files and output_dir
swapped for local ones (line by line: every other byte stays as FAI-RL wrote it): models -> the built-in tiny model,
datasets -> a small JSONL file shaped like the real dataset (its column names and value shapes: GSM8K's "#### N"
answers, hh-rlhf's "\n\nHuman: ... \n\nAssistant: ..." pairs, Aegis's labels, ...). Then `fai-rl-train --recipe COPY
--dry-run` runs on it and the table says which passed, with their notes, and the first problem of those that did not.
Exit status 0 when every recipe passed. Used to check issue 13's "every FAI-RL recipe passes --dry-run"; sft_vlm
recipes are reported as not offered (fai-rl has no multimodal SFT).

FAI-RL's inference and evaluation recipes (recipes/inference, recipes/evaluation) go through fai-rl-inference and
fai-rl-eval the same way (issue 19): model_paths entries and hub `model:` ids -> the tiny model, dataset_name -> a small
file shaped like it (cais/mmlu's question/choices/answer, GSM8K's, or the recipe's dataset_columns), output_file -> the
work dir, the `https://<YOUR_API_ENDPOINT>` placeholder -> a loopback URL (nothing is sent in a dry run). Image and
video recipes are skipped (the VLM issue).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = "fai-rl/tiny"
N_ROWS = 48


def _gsm8k(i: int) -> dict:
    a, b = i % 9 + 1, i % 7 + 2
    return {"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}"}


def _openmath(i: int) -> dict:
    a, b = i % 9 + 1, i % 5 + 3
    return {"problem": f"Compute ${a} \\times {b}$.", "generated_solution": f"${a} \\times {b} = \\boxed{{{a * b}}}$",
            "expected_answer": str(a * b), "problem_source": "augmented_math"}


def _aegis(i: int) -> dict:
    unsafe = i % 3 == 0
    return {"prompt": f"How do I {'pick a lock' if unsafe else 'bake bread'} (case {i})?",
            "response": None if i % 5 == 0 else "Here is how ...",  # Aegis has prompts without a response
            "prompt_label": "unsafe" if unsafe else "safe", "response_label": "safe",
            "violated_categories": "Criminal Planning" if unsafe else ""}


def _hh(i: int) -> dict:
    q = f"\n\nHuman: What is {i} + 1?\n\nAssistant:"
    return {"chosen": f"{q} It is {i + 1}.", "rejected": f"{q} I don't know."}


def _pref(i: int) -> dict:
    return {"prompt": f"Describe a sunset number {i}.", "chosen": "The sky glows orange and pink over the sea.",
            "rejected": "It is a sunset."}


def _text(i: int) -> dict:
    return {"text": f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * (i % 6 + 2)}


def _mmlu(i: int) -> dict:
    return {"question": f"What is {i} + 1?", "choices": [str(i), str(i + 1), str(i + 2), str(i + 3)], "answer": 1,
            "subject": "elementary_mathematics"}


HUB_DATA = {  # a dataset's name on the hub -> rows shaped like it
    "cais/mmlu": _mmlu,
    "openai/gsm8k": _gsm8k,
    "nvidia/OpenMathInstruct-2": _openmath,
    "nvidia/Aegis-AI-Content-Safety-Dataset-2.0": _aegis,
    "Anthropic/hh-rlhf": _hh,
    "allenai/coconot": _pref,
    "trl-internal-testing/descriptiveness-sentiment-trl-style": _pref,
}


def _by_columns(recipe: dict, spec: dict) -> callable:
    """Rows for a dataset only the recipe describes (a local file, s3://, 'your-org/your-dataset')."""
    algorithm = recipe.get("training", {}).get("algorithm", "sft")
    if algorithm == "cpt" or "text_column" in spec:
        col = spec.get("text_column", "text")
        return lambda i: {col: _text(i)["text"]}
    if algorithm == "dpo":
        cols = [spec.get(k, d) for k, d in (("prompt_column", "prompt"), ("chosen_column", "chosen"),
                                              ("rejected_column", "rejected"))]
        return lambda i: dict(zip(cols, _pref(i).values(), strict=True))
    if algorithm in ("grpo", "gspo", "ppo"):
        p, a = spec.get("prompt_column", "prompt"), spec.get("answer_column", "answer")
        return lambda i: {p: _gsm8k(i)["question"], a: _gsm8k(i)["answer"]}
    cols = spec.get("dataset_columns") or ["prompt", "response"]
    return lambda i: {c: f"{c} of row {i}" for c in cols}


_NAME = re.compile(r"^(\s*(?:-\s+)?(?:name|base_model_name|value_model_name|reward_model_name|output_dir):\s*)"
                   r"(\"[^\"]*\"|'[^']*'|[^\s#]+)(.*)$")


def localise(text: str, recipe: dict, work: Path, stem: str) -> str:
    """The recipe text with model ids, dataset names and output_dir swapped; every other line as it was."""
    import yaml

    specs = {d.get("name"): d for d in (recipe.get("data") or {}).get("datasets", []) or []}
    out = []
    for line in text.splitlines(keepends=True):
        m = _NAME.match(line.rstrip("\n"))
        if not m:
            out.append(line)
            continue
        head, value, tail = m.groups()
        key = head.strip().lstrip("-").strip().rstrip(":")
        old = yaml.safe_load(value)
        if key == "output_dir":
            new = str(work / "runs" / stem)
        elif key.endswith("model_name"):
            new = TINY
        elif key == "name" and old in specs:
            rows = HUB_DATA.get(old) or _by_columns(recipe, specs[old])
            file = work / "data" / (re.sub(r"[^A-Za-z0-9]+", "_", str(old)).strip("_") + ".jsonl")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text("".join(json.dumps(rows(i)) + "\n" for i in range(N_ROWS)))
            new = str(file)
        else:
            out.append(line)
            continue
        out.append(f'{head}"{new}"{tail}\n')
    return "".join(out)


_INFER_LINE = re.compile(r"^(\s*(?:model|dataset_name|output_file|api_endpoint):\s*)(\"[^\"]*\"|'[^']*'|[^\s#]+)(.*)$")
_LIST_ITEM = re.compile(r"^(\s*-\s*)(\"[^\"]*\"|'[^']*'|[^\s#]+)(.*)$")


def localise_inference(text: str, section: dict, work: Path, stem: str) -> str:
    """An inference/evaluation recipe's text with its models, data, output file and endpoint placeholder swapped."""
    import yaml

    out, in_paths = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("model_paths:"):
            in_paths = True
            out.append(line)
            continue
        item = _LIST_ITEM.match(line.rstrip("\n")) if in_paths else None
        if item:
            out.append(f'{item.group(1)}"{TINY}"{item.group(3)}\n')
            continue
        if stripped and not stripped.startswith("#"):
            in_paths = False
        m = _INFER_LINE.match(line.rstrip("\n"))
        if not m:
            out.append(line)
            continue
        head, value, tail = m.groups()
        key, old = head.strip().rstrip(":"), yaml.safe_load(value)
        if key == "model":
            new = old if section.get("api_endpoint") else TINY
        elif key == "api_endpoint":
            new = "http://127.0.0.1:8000/v1/chat/completions" if "<" in str(old) else old
        elif key == "output_file":
            new = str(work / "outputs" / f"{stem}{Path(str(old)).suffix or '.csv'}")
        else:
            columns = section.get("dataset_columns") or ["prompt"]
            rows = HUB_DATA.get(old) or (lambda i: {c: f"{c} of row {i}" for c in columns})
            file = work / "data" / (re.sub(r"[^A-Za-z0-9]+", "_", str(old)).strip("_") + ".jsonl")
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text("".join(json.dumps(rows(i)) + "\n" for i in range(8)))
            new = str(file)
        out.append(f'{head}"{new}"{tail}\n')
    return "".join(out)


def _inference_command(f: Path, recipe: dict, work: Path) -> tuple[list[str] | None, Path | None, str]:
    """(command, copy, why skipped) for a FAI-RL inference/evaluation recipe."""
    section_name = "inference" if "inference" in recipe else "evaluation"
    section = recipe[section_name] or {}
    if section.get("image_columns") or section.get("video_columns"):
        return None, None, "image/video inference comes with the VLM issue"
    copy = work / "recipes" / f.parent.name / f.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(localise_inference(f.read_text(), section, work, f"{f.parent.name}-{f.stem}"))
    module = "fai_rl.cli.inference" if section_name == "inference" else "fai_rl.cli.eval"
    return [sys.executable, "-m", module, "--recipe", str(copy), "--dry-run"], copy, ""


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="FAI-RL recipe files or directories of them")
    p.add_argument("--num-gpus", type=int, default=None, help="passed on to fai-rl-train --dry-run (planned, even "
                   "on a host without GPUs)")
    p.add_argument("--show", action="store_true", help="print each dry run's whole output")
    args = p.parse_args(argv)
    files = sorted(f for path in args.paths for f in ([path] if path.is_file() else path.rglob("*.yaml")))
    work = Path(tempfile.mkdtemp(prefix="fairl-dry-run-"))
    failed = 0
    for f in files:
        recipe = yaml.safe_load(f.read_text())
        name = f"{f.parent.name}/{f.name}"
        if isinstance(recipe, dict) and ("inference" in recipe or "evaluation" in recipe):
            cmd, copy, why = _inference_command(f, recipe, work)
            if cmd is None:
                print(f"SKIP  {name}: {why}")
                continue
        else:
            algorithm = recipe.get("training", {}).get("algorithm")
            if algorithm == "sft_vlm":
                print(f"SKIP  {name}: sft_vlm (FAI-RL's multimodal SFT) is not offered by fai-rl")
                continue
            copy = work / "recipes" / f.parent.name / f.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(localise(f.read_text(), recipe, work, f"{f.parent.name}-{f.stem}"))
            cmd = [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(copy), "--dry-run"]
            if args.num_gpus is not None:
                cmd += ["--num-gpus", str(args.num_gpus)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        notes = [line for line in proc.stdout.splitlines() if line.startswith("note: ")]
        if proc.returncode == 0:
            print(f"OK    {name}  ({len(notes)} note{'s' if len(notes) != 1 else ''})")
        else:
            failed += 1
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            first = next((i for i, line in enumerate(lines) if line.startswith(("fai-rl-train:", "fai-rl-inference:",
                                                                              "fai-rl-eval:"))), max(0, len(lines) - 4))
            problems = lines[first:first + 4]
            print(f"FAIL  {name}\n      " + "\n      ".join(problems))
        if args.show:
            print(proc.stdout + proc.stderr)
    print(f"\n{len(files) - failed} of {len(files)} passed; copies and data in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
