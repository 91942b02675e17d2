"""The artefact contract of a run directory, the same for every algorithm and backend.

    output_dir/
      recipe.resolved.yaml   the recipe after defaults and overrides, secrets removed
      metrics.jsonl          one JSON object per logging/eval step: {"step": N, "loss": ..., ...}
      summary.json           first and last value of each metric, runtime, tokens/s
      curves.png             the metrics drawn against step, the algorithm's headline metrics first
      README.md              the run's card: base model, data, algorithm, headline before/after, the command
      final/                 HF model dir, or PEFT adapter + fai_rl.json naming its base
      checkpoint-N/          resumable checkpoints (local backend)
      rollouts/              RL: step-N.jsonl + step-N.html, sampled completions with rewards (fai_rl.transcripts)
      logs/                  train-<time>.log of every run (what the console showed); --nohup pid files
      run_state.json         state, pid, step/total, ETA, latest headline metrics (fai_rl.progress; fai-rl-runs)
      tensorboard/           with tensorboard.enabled: every metrics.jsonl row as scalars (fai_rl.tensorboard_log)
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from fai_rl.algorithms import spec_of
from fai_rl.config.load import recipe_to_yaml
from fai_rl.config.schema import Recipe
from fai_rl.errors import RecipeError
from fai_rl.progress import Progress
from fai_rl.tensorboard_log import TensorBoardLog
from fai_rl.tracking import log_to_wandb

RUN_MARKERS = ("recipe.resolved.yaml", "metrics.jsonl", "final")
# counters and run totals that are not worth a curve
_NOT_CURVES = {"epoch", "num_input_tokens_seen", "num_tokens", "eval_num_tokens", "total_flos"}
_RATE_SUFFIXES = ("_runtime", "per_second", "step_time", "step_time_s")  # timings: summary.json says them


def checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N dirs of a run, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


# Files HF Trainer needs to continue a run exactly (optimizer, schedule, data position, RNG). Under DeepSpeed the
# optimizer (and, for PPO, the whole engine) is in DeepSpeed's own sharded checkpoint instead: `latest` names it.
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
DEEPSPEED_STATE = "latest"


def missing_resume_files(path: Path, weights_only: bool = False) -> list[str]:
    """What a checkpoint dir lacks to resume from it (empty when complete), plain or DeepSpeed.

    weights_only: a checkpoint saved with training.save_only_model needs only trainer_state.json (written last, so
    its presence says the weights are complete too).
    """
    if weights_only:
        needed = ["trainer_state.json"]
    else:
        needed = [f for f in RESUME_FILES if not ((path / DEEPSPEED_STATE).exists() and f == "optimizer.pt")]
    return [f for f in needed if not (path / f).exists()]


def check_output_dir(recipe: Recipe, resuming: bool) -> None:
    """Refuse to start a fresh run on top of an earlier one unless asked to (nothing is written here)."""
    out = Path(recipe.training.output_dir)
    if resuming or recipe.training.overwrite_output_dir or not out.exists():
        return
    if out.exists() and not out.is_dir():
        raise RecipeError(f"training.output_dir: '{out}' is a file; name a directory.")
    held = [m for m in RUN_MARKERS if (out / m).exists()] + [p.name for p in checkpoints(out)[-1:]]
    if held:
        raise RecipeError(
            f"training.output_dir: '{out}' already holds a run ({', '.join(held)}); pass --resume to continue it, "
            "choose another output_dir, or set training.overwrite_output_dir=true to replace it."
        )


class RunDir:
    """Writes the artefacts of one run into output_dir."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir)
        self.metrics_path = self.path / "metrics.jsonl"
        self.started = time.time()
        self.progress = Progress(self.path)  # the live line and run_state.json (fai_rl.progress)
        self.tensorboard: TensorBoardLog | None = None

    def start(self, recipe: Recipe, resume_step: int | None = None) -> None:
        """Create the dir and write the resolved recipe; on resume keep metrics up to the resumed step."""
        if resume_step is None and recipe.training.overwrite_output_dir and self.path.exists():
            for name in ("metrics.jsonl", "summary.json", "curves.png", "README.md"):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "final", ignore_errors=True)
            shutil.rmtree(self.path / "tensorboard", ignore_errors=True)  # else the old run's curves would mix in
            for ckpt in checkpoints(self.path):
                shutil.rmtree(ckpt, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "recipe.resolved.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
        self.progress.prepare(spec_of(recipe.training.algorithm).headline_metrics)
        self.tensorboard = TensorBoardLog(self.path) if recipe.tensorboard.enabled else None
        if resume_step is not None and self.metrics_path.exists():
            kept = [row for row in self.read_metrics() if row.get("step", 0) <= resume_step]
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def log_metrics(self, step: int, metrics: dict, total: int | None = None) -> None:
        """Append one row to metrics.jsonl (numbers only); the same row goes to the wandb run when there is one, to
        TensorBoard when it is on, and to the console's progress line (`total`: the run's steps, where known)."""
        row = {"step": step}
        row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log_to_wandb(step, {k: v for k, v in row.items() if k != "step"})
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, {k: v for k, v in row.items() if k != "step"})
        self.progress.metrics(step, row, total)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line]

    def write_summary(self, **extra) -> dict:
        """summary.json: first/last value of every metric plus run-level numbers; returns it."""
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for row in self.read_metrics():
            for key, value in row.items():
                if key == "step" or not math.isfinite(value):
                    continue
                first.setdefault(key, value)
                last[key] = value
        summary = {
            "metrics": {k: {"first": first[k], "last": last[k]} for k in first},
            "wall_time_s": round(time.time() - self.started, 2),
            **extra,
        }
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary

    def plot_curves(self, algorithm: str = "") -> Path | None:
        """curves.png: the panels of curve_panels (the algorithm's headline metrics first) against step."""
        panels = curve_panels(self.read_metrics(), algorithm)
        if not panels:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, (key, lines) in zip(axes.flat, panels, strict=False):
            for label, (xs, ys) in sorted(lines.items(), reverse=True):  # train first, then eval
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
            if len(lines) > 1:
                ax.legend()
            ax.set_title(key if "train" in lines else f"eval_{key}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.tight_layout()
        out = self.path / "curves.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


Lines = dict[str, tuple[list[float], list[float]]]  # "train" / "eval" -> (steps, values)


def headline_metrics(algorithm: str, logged) -> list[str]:
    """The algorithm's headline metrics among those `logged`, in its order; where a run logged none of them (a
    workflow's per-role rewards), its reward metrics."""
    found = [k for k in spec_of(algorithm).headline_metrics if k in logged]
    return found or sorted(k for k in logged if k.removeprefix("eval_").split("/")[0] == "reward")


def curve_panels(rows: list[dict], algorithm: str = "") -> list[tuple[str, Lines]]:
    """What curves.png draws: one panel per metric (eval_X on X's panel), the algorithm's headline metrics first,
    then the rest by name. Left out: counters and timings, what the algorithm calls meaningless (GRPO's eval_loss),
    every other series that never moved (TRL logs clip ratios that stay at 0): a flat line says nothing, and one
    that repeats a panel already drawn (with one reward function, rewards/<name>/mean is the reward). A headline
    panel is drawn even when flat: a reward that never moved is the news."""
    spec = spec_of(algorithm)
    points: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if (key == "step" or key in _NOT_CURVES or key in spec.meaningless_metrics or key.startswith("train_")
                    or key.endswith(_RATE_SUFFIXES)):
                continue
            xs, ys = points.setdefault(key, ([], []))
            xs.append(row["step"])
            ys.append(value)
    headline = headline_metrics(algorithm, points)
    panels: dict[str, Lines] = {}
    for key, xy in points.items():
        panels.setdefault(key.removeprefix("eval_"), {})["eval" if key.startswith("eval_") else "train"] = xy
    lead = list(dict.fromkeys(k.removeprefix("eval_") for k in headline))
    drawn = [(k, panels[k]) for k in lead]
    for key in sorted(panels):
        repeats = all(any(other.get(label) == xy for _, other in drawn) for label, xy in panels[key].items())
        if key not in lead and not _flat(panels[key]) and not repeats:
            drawn.append((key, panels[key]))
    return drawn


def _flat(lines: Lines) -> bool:
    values = [v for _, ys in lines.values() for v in ys if math.isfinite(v)]
    return not values or all(math.isclose(v, values[0], rel_tol=1e-9, abs_tol=1e-12) for v in values)
