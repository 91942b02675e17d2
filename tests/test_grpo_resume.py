"""Exact resume for local GRPO (fai_rl.backends.local.grpo_resume): resumed from a checkpoint in the middle of a
steps_per_generation window, the run takes the very steps an uninterrupted run takes (same seed, CPU, one thread).

The resumed run reads only what is on disk (weights, optimizer, scheduler, RNG, data position, and the generation
buffer with its position), so it runs in-process after the uninterrupted one; by hand, a kill -9 after checkpoint-3
and a resume in a new process matched the same way (every float metric equal at steps 4-7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fai_rl.cli.train import main

# wall times, and HF's run-level train_loss (the mean over the steps this process ran)
TIMINGS = ("step_time", "runtime", "per_second", "time", "train_loss")


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows_after(out: Path, step: int) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] > step:
            rows.setdefault(row.pop("step"), {}).update(
                {k: v for k, v in row.items() if not any(t in k for t in TIMINGS)})
    return rows


def test_grpo_resumed_mid_generation_window_and_after_an_eval_follows_the_uninterrupted_run(write_recipe, tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny-sft"},
        "data": {"datasets": [{"name": "fai-rl/digits", "split": "train", "max_samples": 64}],
                 "eval_datasets": [{"name": "fai-rl/digits", "split": "test", "max_samples": 8}]},
        "training": {"algorithm": "grpo", "output_dir": str(out), "learning_rate": 1e-3,
                     "lr_scheduler_type": "constant", "max_steps": 5, "per_device_train_batch_size": 8,
                     "num_generations": 4, "max_completion_length": 4, "steps_per_generation": 2, "logging_steps": 1,
                     "save_steps": 3, "eval_steps": 3, "per_device_eval_batch_size": 16, "num_generations_eval": 2,
                     "bf16": False, "seed": 7},
        "rewards": [{"function": "exact_match"}],
    }
    path = write_recipe(recipe)
    assert main(["--recipe", str(path)]) == 0  # generates at steps 1, 3, 5; checkpoint-3 is mid-window
    straight = rows_after(out, 3)
    assert sorted(straight) == [4, 5] and "reward" in straight[5] and "reward" not in straight[4]
    assert "eval_reward" in straight[5]  # evaluated at 3 (before checkpoint-3 was saved: its RNG follows the eval) and 5
    assert (out / "checkpoint-3" / "grpo_buffer-rank0.pt").exists()

    assert main(["--recipe", str(path), "--resume", str(out / "checkpoint-3")]) == 0
    resumed = rows_after(out, 3)
    assert resumed.keys() == straight.keys()
    for step, row in straight.items():
        assert resumed[step] == pytest.approx(row, rel=1e-6, abs=1e-9, nan_ok=True), step
    capsys.readouterr()

    # without the buffer (a checkpoint of an older fai-rl) the run regenerates at step 4: what was wrong before
    (out / "checkpoint-3" / "grpo_buffer-rank0.pt").unlink()
    assert main(["--recipe", str(path), "--resume", str(out / "checkpoint-3")]) == 0
    assert "holds no generation buffer" in capsys.readouterr().out
    assert "reward" in rows_after(out, 3)[4]
