"""A two-process run stopped and killed, then resumed (fai_rl.cli.launch.relaunch): a FAI-RL-layout recipe launched
as FAI-RL's README does (`--nohup`, here `--num-gpus 0 --num-processes 2`, the CPU form of `--num-gpus 2`), stopped
by SIGTERM to the launcher, resumed, one rank killed with SIGKILL, resumed again to the end.

Three launches of two CPU processes (gloo) on the built-in tiny model; each costs ~20 s of imports on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT
from fairl_format import fairl_recipe

from fai_rl.cli.runlock import pid_alive
from fai_rl.cli.runs import run_status

CPU_ENV = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ARITHMETIC = '- name: "fai-rl/arithmetic"\n  split: "train"\n  max_samples: 512\n'
STEPS = 40


def recipe(out: Path) -> str:
    """FAI-RL's SFT template (LoRA, every key it writes) on the tiny model: 40 steps of 2 x 4 rows, a checkpoint every
    2 steps, every step logged; float32 and no checkpointing so that two runs of a step give the same loss."""
    text = fairl_recipe("sft", out, ARITHMETIC, max_length=64, max_prompt_length=32, batch=4, accumulation=1,
                        learning_rate="1.0e-3", max_steps=STEPS)
    for old, new in (("warmup_steps: 100", "warmup_steps: 0"), ("logging_steps: 5", "logging_steps: 1"),
                     ("save_steps: 50", "save_steps: 2"), ("bf16: true", "bf16: false"),
                     ("gradient_checkpointing: true", "gradient_checkpointing: false")):
        assert old in text
        text = text.replace(old, new)
    return text


def losses(out: Path) -> dict[int, list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    found: dict[int, list[float]] = {}
    for row in rows:
        if "loss" in row:
            found.setdefault(row["step"], []).append(row["loss"])
    return found


def wait_for_step(out: Path, step: int, proc: subprocess.Popen | None = None, timeout: float = 240) -> int:
    """Block until metrics.jsonl has a loss at `step` or later; the last logged step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists():
            done = max(losses(out), default=0)
            if done >= step:
                return done
        assert proc is None or proc.poll() is None, proc.stdout.read() if proc.stdout else "ended early"
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def train(*args: str) -> list[str]:
    return [sys.executable, "-m", "fai_rl.cli.train", *args]


@pytest.mark.slow
def test_fairl_recipe_nohup_stop_kill_one_rank_and_resume_on_two_processes(tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "sft_lora.yaml"
    path.write_text(recipe(out))
    launch = ["--recipe", str(path), "--num-gpus", "0", "--num-processes", "2"]
    env = {**os.environ, **CPU_ENV}

    # 1. --nohup, then `kill PID` of the launcher (what the --nohup banner offers): every rank stops at one step,
    # after a checkpoint, as `fai-rl-runs stop` would make it
    started = subprocess.run(train(*launch, "--nohup"), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(re.search(r"started in the background \(pid (\d+)\)", started.stdout).group(1))
    wait_for_step(out, 3)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 120
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid)
    status = run_status(out)
    assert status["state"] == "stopped" and status["step"] < STEPS
    stopped = status["step"]
    (log,) = (out / "logs").glob("train-*.log")
    text = log.read_text()
    assert f"stopped at step {stopped} on request; checkpoint: {out / f'checkpoint-{stopped}'}" in text
    assert f"continue with: fai-rl-train {' '.join(launch)} --resume" in text
    assert (out / f"checkpoint-{stopped}" / "optimizer.pt").exists() and not (out / "STOP").exists()

    # 2. --resume, then SIGKILL to rank 1 mid-run: the whole job ends in bounded time with one message naming the
    # last complete checkpoint and the --resume command
    proc = subprocess.Popen(train(*launch, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    try:
        wait_for_step(out, stopped + 3, proc)
        (rank1,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if p.environ().get("RANK") == "1" and "fai_rl.cli.train" in " ".join(p.cmdline())]
        killed_at = time.time()
        rank1.kill()
        text = proc.communicate(timeout=120)[0]
        ended_s = time.time() - killed_at
    finally:
        proc.kill()
    assert proc.returncode != 0 and ended_s < 60, (ended_s, text[-3000:])
    assert text.count("Last complete checkpoint:") == 1, text[-3000:]
    last = int(re.search(r"Last complete checkpoint: .*checkpoint-(\d+)\n", text).group(1))
    assert f"continue with: fai-rl-train {' '.join(launch)} --resume" in text
    assert run_status(out)["state"] == "failed"
    before_kill = losses(out)
    assert last > stopped and max(before_kill) >= stopped + 3

    # 3. --resume again (the command the message gave): the run finishes; every step logged once
    done = subprocess.run(train(*launch, "--resume"), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = losses(out)
    assert sorted(after) == list(range(1, STEPS + 1)) and all(len(v) == 1 for v in after.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == last and summary["global_step"] == STEPS and summary["processes"] == 2
    assert (out / "final" / "adapter_config.json").exists()
    # the steps the killed run had logged past its last checkpoint come again exactly: the resume is exact
    for step in range(1, max(before_kill) + 1):
        assert after[step] == pytest.approx(before_kill[step], rel=1e-6), step
    assert after[STEPS][0] < after[1][0]  # and it learned
