"""How a run is started: on CPU, in this process on one GPU, through `accelerate launch` on several, or detached.

Every child process gets its arguments as a list (never through a shell), so no override string can run anything.
This module never imports torch: GPUs are counted with nvidia-smi so CUDA_VISIBLE_DEVICES can still be pinned before
torch initialises CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fai_rl.config.schema import Recipe
from fai_rl.errors import BackendError, RecipeError

LAUNCHED_ENV = "FAI_RL_LAUNCHED"  # set in processes started by `accelerate launch`, so they train instead of relaunching


def count_host_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass
class LaunchPlan:
    """Where the run goes: `gpus` 0 = CPU; `command` set when it relaunches through accelerate."""

    gpus: int
    host_gpus: int
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None

    def describe(self) -> str:
        if self.command is not None:
            env = " ".join(f"{k}={v}" for k, v in self.env.items())
            return f"{self.gpus} processes on {self.gpus} GPUs via accelerate:\n  {env} {shlex.join(self.command)}"
        if self.gpus == 0:
            why = "no GPU found" if self.host_gpus == 0 else "--num-gpus 0"
            return f"one process on CPU ({why}); training on CPU is slow beyond tiny models"
        pin = f" (pinned with CUDA_VISIBLE_DEVICES={self.env['CUDA_VISIBLE_DEVICES']})" if self.env else ""
        return f"one process on 1 of {self.host_gpus} GPUs{pin}"


def plan_launch(recipe: Recipe, num_gpus: int | None, child_argv: list[str]) -> LaunchPlan:
    """Decide how to start the run; RecipeError when the host cannot give what was asked."""
    host = count_host_gpus()
    if num_gpus is None:
        num_gpus = 1 if host else 0
    if num_gpus < 0:
        raise RecipeError(f"--num-gpus: {num_gpus} must be 0 (CPU) or more.")
    if num_gpus > host:
        raise RecipeError(
            f"--num-gpus: asked for {num_gpus} GPUs but this host has {host}; "
            + ("pass --num-gpus 0 (or leave it out) to run on CPU." if host == 0 else f"use --num-gpus {host} or fewer.")
        )
    if num_gpus == 0:
        return LaunchPlan(0, host, env={"CUDA_VISIBLE_DEVICES": ""} if host else {})
    if num_gpus == 1:
        # HF Trainer wraps the model in DataParallel when it sees several GPUs in one process: show it one.
        first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
        return LaunchPlan(1, host, env={"CUDA_VISIBLE_DEVICES": first} if host > 1 else {})
    return LaunchPlan(num_gpus, host, env={LAUNCHED_ENV: "1"}, command=accelerate_command(recipe, num_gpus, child_argv))


def accelerate_command(recipe: Recipe, num_gpus: int, child_argv: list[str]) -> list[str]:
    """`accelerate launch` of this CLI on num_gpus processes: DDP, or DeepSpeed when the recipe names a config."""
    t = recipe.training
    if t.deepspeed_config and importlib.util.find_spec("deepspeed") is None:
        raise BackendError("training.deepspeed_config: needs deepspeed; install it with pip install 'fai-rl[deepspeed]'.")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_gpus), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no" if t.bf16 is False else "bf16"]
    if t.deepspeed_config:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(t.deepspeed_config)]
    else:
        cmd += ["--multi_gpu"]
    return [*cmd, "--module", "fai_rl.cli.train", *child_argv]


def relaunch(plan: LaunchPlan) -> int:
    """Run the accelerate command and wait; its exit code is ours."""
    print(f"launching: {plan.describe()}", flush=True)
    return subprocess.call(plan.command, env={**os.environ, **plan.env})


def detach(recipe: Recipe, child_argv: list[str]) -> tuple[int, Path, Path]:
    """Start the same run in its own session with output to output_dir/logs; returns (pid, log, pid file)."""
    logs = Path(recipe.training.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = logs / f"train-{stamp}.log"
    pid_file = logs / f"train-{stamp}.pid"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fai_rl.cli.train", *child_argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal closing; its own process group for `kill -- -PID`
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid, log, pid_file
