"""A two-process run stopped and killed, then resumed (fai_rl.cli.launch.relaunch), through
scripts/multi_gpu_resume_check.py, the GPU re-proof of issue 20, here on CPU processes (gloo) so it cannot rot: the
shipped FAI-RL-format recipe launched as FAI-RL's README does (`--nohup`, here `--num-gpus 0 --num-processes 2`, the
CPU form of `--num-gpus 2`), stopped by SIGTERM to the launcher, resumed, rank 1 killed with SIGKILL, resumed with the
command the failure message printed, to the end.

Three launches of two CPU processes on the built-in tiny model; each costs ~20 s of imports on 2 cores.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_fairl_recipe_nohup_stop_kill_one_rank_and_resume_on_two_processes(tmp_path):
    spec = importlib.util.spec_from_file_location("resume_check", ROOT / "scripts/multi_gpu_resume_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # asserts inside: stopped cleanly at a step < 40 with checkpoint-N; after the kill one "Last complete
    # checkpoint" line and the --resume command; that command finishes with steps 1..40 each logged once
    found = script.check(tmp_path, gpus=2, cpu=True, steps=40, tolerance=1e-6)
    assert found["job_ended_s_after_kill"] < 60  # torchrun's agent ends the survivor: no hang
    assert found["stopped_at"] < found["last_checkpoint"] < found["killed_run_last_step"] + 1
    assert found["max_rel_diff_rerun_steps"] <= 1e-6  # the steps the killed run logged past its checkpoint repeat
    assert found["last_loss"] < found["first_loss"]


def test_failure_message_names_the_last_complete_checkpoint_and_the_resume_command(tmp_path):
    """What the launcher says when a rank dies: checkpoint-6, cut short by the kill (no trainer_state.json), is
    skipped, as --resume skips it; the command's own --resume PATH goes, so it continues from the latest."""
    from types import SimpleNamespace

    from fai_rl.cli.launch import failure_message

    recipe = SimpleNamespace(training=SimpleNamespace(output_dir=str(tmp_path), save_only_model=False))
    command = ["fai-rl-train", "--recipe", "r.yaml", "--resume", str(tmp_path / "checkpoint-2"), "--num-gpus", "2",
               "training.max_steps=9"]
    assert "No complete checkpoint in" in failure_message(recipe, 1, command)
    for step, files in ((4, ("optimizer.pt", "scheduler.pt", "trainer_state.json")), (6, ("optimizer.pt",))):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in files:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    text = failure_message(recipe, 1, command)
    assert "the run failed (exit code 1)" in text and f"Last complete checkpoint: {tmp_path / 'checkpoint-4'}\n" in text
    assert text.endswith("continue with: fai-rl-train --recipe r.yaml --num-gpus 2 training.max_steps=9 --resume")
