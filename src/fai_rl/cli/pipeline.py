"""`fai-rl-train --recipe PIPELINE.yaml`: the stages of a pipeline recipe (fai_rl.config.schema_pipeline) in order,
each training stage a normal fai-rl-train run, each starting from the output of the one before, then the export.

    fai-rl-train --recipe recipes/pipelines/quickstart.yaml                    # SFT -> GRPO -> export
    fai-rl-train --recipe recipes/pipelines/quickstart.yaml --dry-run          # check every stage, run none
    fai-rl-train --recipe recipes/pipelines/quickstart.yaml --resume           # continue at the stage that was cut
    fai-rl-train --recipe recipes/pipelines/quickstart.yaml --nohup            # checked here, then detached
    fai-rl-train --recipe recipes/pipelines/quickstart.yaml preset=quick grpo.training.learning_rate=3e-4

Every stage's recipe is loaded and checked (its derived keys included) before the first one starts; a bad stage is
one message naming the stage and the dotted key, exit 2, nothing written. output_root/pipeline_state.json records
each stage's state (pending, running, finished, stopped, failed), so --resume skips the finished stages and resumes
the cut one from its last checkpoint (the normal --resume), or starts it afresh when it saved none.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from fai_rl.errors import FaiRLError, RecipeError, UsageError

STATE_FILE = "pipeline_state.json"
RunStage = Callable[[argparse.Namespace, list[str]], int]  # fai_rl.cli.train's run of one recipe


def run_pipeline(args: argparse.Namespace, argv: list[str], run_stage: RunStage) -> int:
    """Check every stage, then run them in order (or, with --dry-run, show each stage's dry run; with --nohup, the
    same command detached once the checks pass); returns the exit code. `run_stage(args, argv)` is fai-rl-train's
    run of one training recipe (passed in: no import circle)."""
    from fai_rl.config.load_pipeline import load_pipeline

    if args.resume not in (None, "latest"):
        raise UsageError(f"--resume {args.resume}: a pipeline resumes at the stage that was cut, from that stage's "
                         "last checkpoint; pass --resume alone.")
    pipe, stages = load_pipeline(args.recipe, args.overrides)
    root = Path(pipe.output_root)
    state = _read_state(root) if args.resume else None
    done = {s.name for s in stages if state and _finished(state, s)}
    cut = next((s for s in stages if s.name not in done), None)
    resume_cut = bool(args.resume and cut is not None and cut.kind == "train" and _has_checkpoint(cut.output_dir))
    if args.resume and state is None:
        print(f"note: --resume: no {root / STATE_FILE}; starting the pipeline from its first stage", flush=True)
    todo = [s for s in stages if s.name not in done]
    _check_stages(args, todo, cut if resume_cut else None)
    print(_plan(args.recipe, pipe.preset, stages, done, cut if resume_cut else None), flush=True)
    if args.nohup and not args.dry_run:
        return _detach(root, [a for a in argv if a != "--nohup"])
    if args.dry_run:
        return _dry_run(args, todo, cut if resume_cut else None, run_stage)
    if cut is None:
        print(f"every stage is finished ({root / STATE_FILE}); nothing to do.")
        return 0
    state = _fresh_state(args.recipe, pipe.preset, stages, state)
    for s in todo:
        resumed = resume_cut and s is cut
        _set(root, state, s, status="running", started=time.time(), resumed=resumed)
        print(f"\n===== stage {s.index + 1}/{len(stages)}: {s.name} ({s.kind})"
              f"{', resumed from its last checkpoint' if resumed else ''} =====", flush=True)
        began = time.time()
        try:
            rc = _export(s) if s.kind == "export" else \
                _stage(s, lambda s=s, r=resumed: run_stage(_stage_args(args, s, r), _stage_argv(s, r)))
        except BaseException as e:  # a second Ctrl-C (the first stops the stage cleanly) is a stop, not a failure
            status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
            _set(root, state, s, status=status, seconds=round(time.time() - began, 1))
            raise
        status = "finished" if rc == 0 and _completed(s) else ("stopped" if rc == 0 else "failed")
        _set(root, state, s, status=status, seconds=round(time.time() - began, 1))
        if status != "finished":
            print(f"pipeline: stage {s.name} {status}; continue with: fai-rl-train --recipe {args.recipe} --resume",
                  flush=True)
            return rc
    print(f"\npipeline finished: {', '.join(f'{s.name} -> {s.output_dir}' for s in stages)}\n"
          f"state: {root / STATE_FILE}", flush=True)
    return 0


def _dry_run(args: argparse.Namespace, todo, resumed, run_stage: RunStage) -> int:
    """Each training stage's own dry run (data, examples, rewards, launch), then the keys the pipeline set in it."""
    from fai_rl.config.schema_pipeline import DERIVED_KEYS

    for s in (t for t in todo if t.kind == "train"):
        print(f"\n===== stage {s.name}: dry run =====", flush=True)
        stage_args = _stage_args(args, s, s is resumed)
        stage_args.overrides = _checkable(s, todo) + stage_args.overrides[len(s.overrides):]
        _stage(s, lambda: run_stage(stage_args, _stage_argv(s, s is resumed)))
        print(f"derived: {'  '.join(o for o in s.overrides if o.split('=', 1)[0] in DERIVED_KEYS)}"
              + (f"\n  (model.init_from: written by the stage before; checked when {s.name} starts)"
                 if len(_checkable(s, todo)) < len(s.overrides) else ""), flush=True)
    print("\ndry run: every stage checked; nothing trained.")
    return 0


def _check_stages(args: argparse.Namespace, todo, resumed) -> None:
    """Load every training stage's recipe with its derived keys, as the stage will; all problems, each prefixed by
    its stage, in one RecipeError (exit 2) before anything is written."""
    from fai_rl.artifacts import check_output_dir
    from fai_rl.backends import check_dispatch
    from fai_rl.cli.runlock import check_output_path
    from fai_rl.config import load_recipe
    from fai_rl.rewards import check_rewards
    from fai_rl.s3 import check_s3

    problems: list[str] = []
    backend: dict = {}  # output_dir -> the backend its stage runs on
    for s in todo:
        if s.kind != "train":
            continue
        try:
            recipe = load_recipe(s.recipe, _checkable(s, todo), extra_rules=[check_dispatch, check_rewards, check_s3])
            backend[s.output_dir] = recipe.training.backend
            before = backend.get(s.previous)
            if before is not None and before != recipe.training.backend:  # a local run dir is no Tinker state
                raise RecipeError(f"training.backend: '{recipe.training.backend}', but the stage before runs on "
                                  f"'{before}' and this one starts from its weights; run both on one backend "
                                  "(set it in the pipeline's overrides).")
            check_output_path(recipe.training.output_dir)
            # a resumed pipeline resumes the cut stage and replaces what a later stage left (_stage_args)
            check_output_dir(recipe, resuming=args.resume is not None)
        except FaiRLError as e:
            lines = getattr(e, "problems", None) or [str(e)]
            problems += [f"stage '{s.name}' ({s.recipe}): {line}" for line in lines]
    if problems:
        raise RecipeError(problems)


def _detach(root: Path, child_argv: list[str]) -> int:
    """The pipeline in the background (fai_rl.cli.launch.detach: its own session, output to output_root/logs/)."""
    from types import SimpleNamespace

    from fai_rl.cli.launch import detach

    # detach reads only training.output_dir of the recipe it is given: here the pipeline's root
    pid, log, pid_file = detach(SimpleNamespace(training=SimpleNamespace(output_dir=str(root))), child_argv)
    print(f"started in the background (pid {pid})\n  log:    {log}\n  state:  {root / STATE_FILE}\n"
          f"  list:   fai-rl-runs list {root}\n  stop:   fai-rl-runs stop {root}/STAGE   # the running stage "
          f"checkpoints and the pipeline stops; or: kill {pid} (pid in {pid_file})", flush=True)
    return 0


def _checkable(s, todo) -> list[str]:
    """A stage's overrides as they can be checked now: model.init_from is left out while the stage it names is still
    to run in this call (its output_dir does not exist yet; the stage's load checks it again when it starts)."""
    if s.previous is None or not any(t.output_dir == s.previous for t in todo):
        return list(s.overrides)
    return [o for o in s.overrides if not o.startswith("model.init_from=")]


def _stage(s, run: Callable[[], int]) -> int:
    """One training stage through fai-rl-train; its errors name the stage (the message is still one line each)."""
    from fai_rl.runlog import stop_log

    try:
        return run()
    except FaiRLError as e:  # the same error, each line prefixed by the stage
        where = f"stage '{s.name}' ({s.recipe}): "
        problems = getattr(e, "problems", None)
        raise (type(e)([where + p for p in problems]) if problems else type(e)(where + str(e))) from None
    finally:
        stop_log()  # each stage's console copy goes to its own output_dir/logs/


def _stage_args(args: argparse.Namespace, s, resume: bool) -> argparse.Namespace:
    out = argparse.Namespace(**vars(args))
    out.recipe, out.overrides, out.resume = str(s.recipe), list(s.overrides), "latest" if resume else None
    if args.resume and not resume:  # a stage after the cut one (or the cut one with no checkpoint) starts afresh
        out.overrides.append("training.overwrite_output_dir=true")
    return out


def _stage_argv(s, resume: bool) -> list[str]:
    """The command line a stage would have alone (a launched child and the run card see it)."""
    return ["--recipe", str(s.recipe), *s.overrides, *(["--resume"] if resume else [])]


def _export(s) -> int:
    """Merge the previous stage's final model into output_root/NAME (fai-rl-export, replacing an earlier export)."""
    from fai_rl.cli.export import _run, build_parser

    args = build_parser().parse_args([str(s.previous), "--out", str(s.output_dir), "--dtype", s.dtype, "--overwrite"])
    return _run(args)


def _has_checkpoint(out: Path) -> bool:
    """A resumable point: a local checkpoint-N dir, or a Tinker state in checkpoints.json."""
    from fai_rl.artifacts import checkpoints

    if checkpoints(Path(out)):
        return True
    try:
        listed = json.loads((Path(out) / "checkpoints.json").read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(c.get("kind") == "state" for c in listed)


def _completed(s) -> bool:
    """The stage's output is whole: a training run that finished (run_state.json), an export's model dir."""
    from fai_rl.progress import read_state

    if s.kind == "export":
        return (Path(s.output_dir) / "config.json").is_file()
    run = read_state(s.output_dir)
    return bool(run and run.get("state") == "finished")


def _finished(state: dict, s) -> bool:
    entry = next((e for e in state.get("stages", []) if e.get("name") == s.name), None)
    return bool(entry and entry.get("status") == "finished" and entry.get("output_dir") == str(s.output_dir)
                and _completed(s))


def _read_state(root: Path) -> dict | None:
    try:
        return json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fresh_state(recipe: str, preset, stages, old: dict | None) -> dict:
    """The state file's content: finished stages of `old` (a resumed run) kept, the others pending."""
    kept = {e["name"]: e for e in (old or {}).get("stages", []) if e.get("status") == "finished"}
    return {"pipeline": str(recipe), "preset": preset, "stages": [
        kept.get(s.name) or {"name": s.name, "kind": s.kind, "output_dir": str(s.output_dir), "status": "pending"}
        for s in stages]}


def _set(root: Path, state: dict, s, **values) -> None:
    """Update one stage's entry and write output_root/pipeline_state.json whole (tmp + rename)."""
    entry = next(e for e in state["stages"] if e["name"] == s.name)
    entry.update(values)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{STATE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / STATE_FILE)


def _plan(recipe: str, preset, stages, done: set[str], resumed) -> str:
    rows = [f"pipeline {recipe} (preset {preset or 'none'}): {len(stages)} stages"]
    for s in stages:
        what = f"train {s.recipe}" if s.kind == "train" else f"export {s.previous} ({s.dtype})"
        start = f", from {s.previous}" if s.kind == "train" and s.previous else ""
        tag = "finished: skipped" if s.name in done else ("resume" if s is resumed else "run")
        rows.append(f"  {s.index + 1}. {s.name}: {what}{start} -> {s.output_dir}  [{tag}]")
    return "\n".join(rows)
