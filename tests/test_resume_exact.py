"""Exact resume for every local algorithm: a run resumed from any of its checkpoints takes the very steps an
uninterrupted run takes (same seed, CPU, one thread): every per-step metric equal, wall times aside.

One uninterrupted reference run per algorithm (module-scoped), saving a checkpoint at every step; resuming from its
checkpoint-k and comparing steps k+1.. with the reference is a kill after step k, because checkpoint-k on disk is
exactly what a kill after it leaves (HF writes it, staged and renamed, before step k+1 begins). For the RL
algorithms the kills fall in the middle of a steps_per_generation window (k = 1, 3), on its boundary (k = 2), and
during the evaluation at step 4 (whose last checkpoint is 3: the resumed run evaluates again, then goes on). One
real kill -9 of a subprocess (GRPO after checkpoint-3, the mid-window one) resumes onto the same trajectory too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fai_rl.cli.train import main

from conftest import ROOT, kill_after_checkpoint

# wall times, and HF's run-level train_loss (the mean over the steps this process ran)
TIMINGS = ("step_time", "runtime", "per_second", "time", "train_loss")
STEPS = 5
RL = ("grpo", "gspo", "rloo")


def recipe_for(algorithm: str, out: Path) -> dict:
    training = {"algorithm": algorithm, "output_dir": str(out), "learning_rate": 1e-3, "lr_scheduler_type": "linear",
                "warmup_steps": 1, "max_steps": STEPS, "per_device_train_batch_size": 4, "logging_steps": 1,
                "save_steps": 1, "bf16": False, "seed": 11}
    data: dict = {"max_length": 48}
    model = "fai-rl/tiny-sft"
    rewards = None
    if algorithm in ("sft", "cpt"):
        model = "fai-rl/tiny"
        data["datasets"] = [{"name": "fai-rl/digits", "split": "train", "max_samples": 64}]
        data["eval_datasets"] = [{"name": "fai-rl/digits", "split": "test", "max_samples": 8}]
        if algorithm == "cpt":
            data["datasets"][0]["text_column"] = "prompt"
            data["eval_datasets"][0]["text_column"] = "prompt"
        training.update(eval_steps=4, per_device_eval_batch_size=8)
    elif algorithm == "dpo":
        data["datasets"] = [{"name": "fai-rl/digits-pairs", "split": "train", "max_samples": 64}]
        data["eval_datasets"] = [{"name": "fai-rl/digits-pairs", "split": "test", "max_samples": 8}]
        training.update(eval_steps=4, per_device_eval_batch_size=8)
    else:
        data["datasets"] = [{"name": "fai-rl/digits", "split": "train", "max_samples": 64}]
        rewards = [{"function": "exact_match"}]
        training.update(max_completion_length=4)
        if algorithm == "ppo":
            training.update(num_ppo_epochs=2)
        else:
            data["eval_datasets"] = [{"name": "fai-rl/digits", "split": "test", "max_samples": 8}]
            training.update(num_generations=4, steps_per_generation=2, eval_steps=4, per_device_eval_batch_size=8,
                            num_generations_eval=2)
    recipe = {"model": {"base_model_name": model}, "data": data, "training": training}
    if rewards:
        recipe["rewards"] = rewards
    return recipe


def rows_after(out: Path, step: int) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] > step:
            rows.setdefault(row.pop("step"), {}).update(
                {k: v for k, v in row.items() if not any(t in k for t in TIMINGS)})
    return rows


def same_rows(got: dict[int, dict], want: dict[int, dict], where: str) -> None:
    assert got.keys() == want.keys(), where
    for step, row in want.items():
        assert got[step].keys() == row.keys(), (where, step)
        assert got[step] == pytest.approx(row, rel=1e-6, abs=1e-9, nan_ok=True), (where, step)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=("sft", "cpt", "dpo", "ppo", "grpo", "gspo", "rloo"))
def reference(request, tmp_path_factory, one_thread):
    """(algorithm, recipe path, output dir, every metric row): one uninterrupted run with a checkpoint per step."""
    algorithm = request.param
    base = tmp_path_factory.mktemp(f"resume-{algorithm}")
    out = base / "run"
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_for(algorithm, out), sort_keys=False))
    assert main(["--recipe", str(path)]) == 0
    return algorithm, path, out, rows_after(out, 0)


def test_resumed_from_any_checkpoint_every_algorithm_follows_the_uninterrupted_run(reference, capsys):
    algorithm, path, out, straight = reference
    assert sorted(straight) == list(range(1, STEPS + 1))
    if algorithm in RL:
        assert "reward" in straight[3] and "reward" not in straight[4]  # generated at 1, 3, 5
        assert "eval_reward" in straight[4]
    # latest first: a resume rewrites only the checkpoints after its own, which an earlier one then rewrites again
    for k in (3, 1):
        assert main(["--recipe", str(path), "--resume", str(out / f"checkpoint-{k}")]) == 0
        same_rows(rows_after(out, k), {s: r for s, r in straight.items() if s > k}, f"{algorithm} from checkpoint-{k}")
    assert "holds no" not in capsys.readouterr().out
    if algorithm == "grpo":
        # without the buffer (a checkpoint of an older fai-rl) the run regenerates at step 4: what was wrong before
        (out / "checkpoint-3" / "grpo_buffer-rank0.pt").unlink()
        assert main(["--recipe", str(path), "--resume", str(out / "checkpoint-3")]) == 0
        assert "holds no generation buffer" in capsys.readouterr().out
        assert "reward" in rows_after(out, 3)[4]


@pytest.mark.parametrize("reference", ["gspo"], indirect=True)
def test_a_kill_9_mid_generation_window_resumes_onto_the_uninterrupted_run(reference, tmp_path):
    """A real lost process: GSPO killed by SIGKILL once checkpoint-3 (mid-window, before the step-4 eval) is on disk,
    then resumed in this process from the latest complete checkpoint."""
    algorithm, _, _, straight = reference
    out = tmp_path / "run"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_for(algorithm, out), sort_keys=False))
    kill_after_checkpoint(path, out / "checkpoint-3")
    assert not (out / "final").exists()
    for later in out.glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 3:
            shutil.rmtree(later)  # killed a moment later than asked: --resume takes the latest, make it checkpoint-3
    assert main(["--recipe", str(path), "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 3
    same_rows(rows_after(out, 3), {s: r for s, r in straight.items() if s > 3}, "gspo after kill -9")


def test_a_local_workflow_resumed_from_its_checkpoints_follows_the_uninterrupted_run(tmp_path, one_thread, capsys):
    """The solver-judge workflow loop (backends/local/workflow.py): checkpoints at every step, an evaluation at 2;
    resumed from checkpoint-3 and from checkpoint-1 (a kill during the step-2 evaluation), every logged metric
    equals the uninterrupted run's. Then fai-rl-runs stop (output_dir/STOP) ends a resumed run at a checkpoint."""
    out = tmp_path / "run"
    args = ["--recipe", str(ROOT / "recipes" / "quickstart" / "solver_judge.yaml"), f"training.output_dir={out}",
            "training.max_steps=4", "training.per_device_train_batch_size=8", "training.logging_steps=1",
            "training.save_steps=1", "training.eval_steps=2", "training.num_generations_eval=2",
            "data.datasets[0].max_samples=16", "data.eval_datasets[0].max_samples=4"]
    assert main(args) == 0
    straight = rows_after(out, 0)
    assert sorted(straight) == [1, 2, 3, 4] and "eval_judge_accuracy" in straight[2]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for k in (3, 1):
        assert main([*args, "--resume", str(out / f"checkpoint-{k}")]) == 0
        same_rows(rows_after(out, k), {s: r for s, r in straight.items() if s > k}, f"workflow from checkpoint-{k}")
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 1
    # fai-rl-runs stop (it writes output_dir/STOP): the loop stops after the step it is on, at a checkpoint
    capsys.readouterr()
    (out / "STOP").write_text("")
    assert main([*args, "--resume", str(out / "checkpoint-1")]) == 0
    assert f"stopped at step 2 on request; checkpoint: {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert sorted(rows_after(out, 0)) == [1, 2]  # nothing after the stop
