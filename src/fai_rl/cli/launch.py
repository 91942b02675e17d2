"""How a run is started: on CPU, in this process on one GPU, through `accelerate launch` on several or on several
nodes, or detached.

Every child process gets its arguments as a list (never through a shell), so no override string can run anything.
This module never imports torch: GPUs are counted with nvidia-smi so CUDA_VISIBLE_DEVICES can still be pinned before
torch initialises CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fai_rl.artifacts import checkpoints, missing_resume_files
from fai_rl.config.deepspeed import deepspeed_config_path
from fai_rl.config.schema import Recipe
from fai_rl.errors import BackendError, RecipeError
from fai_rl.runlog import LOG_ENV

LAUNCHED_ENV = "FAI_RL_LAUNCHED"  # set in processes started by `accelerate launch`, so they train instead of relaunching
DEFAULT_PORT = 29500


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
class Nodes:
    """The multi-node flags: how many machines, which one this is, and where rank 0 listens."""

    count: int = 1
    rank: int = 0
    main_ip: str | None = None
    main_port: int | None = None

    def check(self) -> list[str]:
        problems = []
        if self.count < 1:
            problems.append(f"--num-nodes: {self.count} must be 1 or more.")
        elif not 0 <= self.rank < self.count:
            problems.append(f"--node-rank: {self.rank} must be in [0, {self.count - 1}] for --num-nodes {self.count}; "
                            "give 0 on the main node and 1, 2, ... on the others.")
        if self.count > 1 and not self.main_ip:
            problems.append(f"--main-process-ip: needed with --num-nodes {self.count}; give the address of the node "
                            "started with --node-rank 0, the same on every node.")
        if self.count == 1 and self.rank:
            problems.append(f"--node-rank: {self.rank} without --num-nodes; pass --num-nodes too.")
        if self.main_port is not None and not 0 < self.main_port < 65536:
            problems.append(f"--main-process-port: {self.main_port} is not a TCP port; use e.g. {DEFAULT_PORT}.")
        return problems


@dataclass
class LaunchPlan:
    """Where the run goes: `gpus` per node (0 = CPU); `command` set when it relaunches through accelerate."""

    gpus: int
    host_gpus: int
    processes: int = 1  # per node
    nodes: Nodes = field(default_factory=Nodes)
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    note: str = ""  # --dry-run planned for GPUs this host does not have

    @property
    def world_size(self) -> int:
        return self.processes * self.nodes.count

    def describe(self) -> str:
        return self.note + self._describe()

    def _describe(self) -> str:
        if self.command is not None:
            env = " ".join(f"{k}={v}" for k, v in self.env.items())
            where = f"{self.gpus} GPUs" if self.gpus else "CPU (gloo)"
            node = (f" on node {self.nodes.rank} of {self.nodes.count} ({self.world_size} processes in all)"
                    if self.nodes.count > 1 else "")
            procs = f"{self.processes} process{'es' if self.processes > 1 else ''}"
            return f"{procs} on {where}{node} via accelerate:\n  {env} {shlex.join(self.command)}"
        if self.gpus == 0:
            why = "no GPU found" if self.host_gpus == 0 else "--num-gpus 0"
            return f"one process on CPU ({why}); training on CPU is slow beyond tiny models"
        pin = f" (pinned with CUDA_VISIBLE_DEVICES={self.env['CUDA_VISIBLE_DEVICES']})" if self.env else ""
        return f"one process on 1 of {self.host_gpus} GPUs{pin}"


def plan_launch(
    recipe: Recipe,
    num_gpus: int | None,
    child_argv: list[str],
    num_processes: int | None = None,
    nodes: Nodes | None = None,
    dry_run: bool = False,
) -> LaunchPlan:
    """Decide how to start the run; RecipeError naming the flag when the host cannot give what was asked.

    `num_gpus` and `num_processes` count this node only; accelerate is told the totals over all nodes. A dry run may
    ask for more GPUs than this host has (checking an 8-GPU recipe on a laptop): it shows that launch, with a note.
    """
    nodes = nodes or Nodes()
    host = count_host_gpus()
    if num_gpus is None:
        num_gpus = 1 if host else 0
    note = ""
    if dry_run and num_gpus > host:
        note = (f"(this host has {host} GPU{'s' if host != 1 else ''}; shown is the launch on a node with "
                f"{num_gpus}, which --num-gpus {num_gpus} needs)\n")
        host = num_gpus
    problems = nodes.check()
    if num_gpus < 0:
        problems.append(f"--num-gpus: {num_gpus} must be 0 (CPU) or more.")
    elif num_gpus > host:
        problems.append(
            f"--num-gpus: asked for {num_gpus} GPUs but this host has {host}; "
            + ("pass --num-gpus 0 (or leave it out) to run on CPU." if host == 0 else f"use --num-gpus {host} or fewer.")
        )
    if num_processes is not None:
        if num_processes < 1:
            problems.append(f"--num-processes: {num_processes} must be 1 or more.")
        elif num_gpus > 0 and num_processes != num_gpus:
            problems.append(f"--num-processes: {num_processes} with --num-gpus {num_gpus}; on GPUs each process drives "
                            "one GPU, so leave --num-processes out (it is for CPU processes, with --num-gpus 0).")
    if problems:
        raise RecipeError(problems)
    processes = num_gpus if num_gpus > 0 else (num_processes or 1)
    # DeepSpeed needs the distributed environment a launcher sets up, even for one process (ZeRO-offload on one GPU)
    if processes == 1 and nodes.count == 1 and not recipe.training.deepspeed_config:
        if num_gpus == 0:
            return LaunchPlan(0, host, env={"CUDA_VISIBLE_DEVICES": ""} if host else {}, note=note)
        # HF Trainer wraps the model in DataParallel when it sees several GPUs in one process: show it one.
        first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
        return LaunchPlan(1, host, env={"CUDA_VISIBLE_DEVICES": first} if host > 1 else {}, note=note)
    env = {LAUNCHED_ENV: "1"}
    if num_gpus == 0:  # CPU processes: DDP needs accelerate told so; DeepSpeed runs its CPU accelerator over gloo
        env["CUDA_VISIBLE_DEVICES"] = ""
        if not recipe.training.deepspeed_config:
            env["ACCELERATE_USE_CPU"] = "true"
    plan = LaunchPlan(num_gpus, host, processes, nodes, env, note=note)
    plan.command = accelerate_command(recipe, plan, child_argv)
    return plan


def accelerate_command(recipe: Recipe, plan: LaunchPlan, child_argv: list[str]) -> list[str]:
    """`accelerate launch` of this CLI: DDP, or DeepSpeed when the recipe names a config; one node or several.

    The launcher, not the user, picks the process count, the mixed precision and the DeepSpeed config file. The
    config's "auto" values are filled from the recipe inside each process (fai_rl.config.deepspeed), which is what
    the trainers use; accelerate only needs the file to select DeepSpeed.
    """
    t, nodes = recipe.training, plan.nodes
    ds_file = deepspeed_config_path(t.deepspeed_config) if t.deepspeed_config else None
    if ds_file is not None and importlib.util.find_spec("deepspeed") is None:
        raise BackendError("training.deepspeed_config: needs deepspeed; install it with pip install 'fai-rl[deepspeed]'.")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(plan.world_size),
           "--num_machines", str(nodes.count)]
    if nodes.count > 1:
        cmd += ["--machine_rank", str(nodes.rank), "--main_process_ip", str(nodes.main_ip),
                "--main_process_port", str(nodes.main_port or DEFAULT_PORT)]
    else:  # a free port, so two runs on one host (or two test workers) never collide
        cmd += ["--main_process_port", str(nodes.main_port or 0)]
    cmd += ["--mixed_precision", "bf16" if plan.gpus and t.bf16 is not False else "no"]
    if ds_file is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(ds_file)]
        if nodes.count > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]  # torchrun on each node, like DDP: no ssh/pdsh
    else:
        cmd += ["--multi_gpu"]
    return [*cmd, "--module", "fai_rl.cli.train", *child_argv]


def relaunch(plan: LaunchPlan, recipe: Recipe, command: list[str]) -> int:
    """Run the accelerate command and wait, its output copied into the run's log; its exit code is ours.

    SIGTERM (`kill PID` of a --nohup run) or Ctrl-C asks every rank for a clean stop through output_dir/STOP, as
    `fai-rl-runs stop` does; a second one kills the run's processes at once. The launched agent gets a process group
    of its own, so a Ctrl-C reaches only this process: in the terminal's group, the agent took it as the order to end
    the ranks, and this process ended the agent, as it did on SIGTERM, so no checkpoint was written (measured: a
    2-process run Ctrl-C'd at step 3 kept only checkpoint-2, exit 130). When a rank fails (killed, out of
    memory, an error), torchrun's agent ends the others (SIGTERM, SIGKILL after 30 s), and this process says once
    which checkpoint is the last complete one and how to continue from it.
    """
    from fai_rl.progress import STOP_FILE
    from fai_rl.runlog import call_teed

    out = Path(recipe.training.output_dir)
    child: list[subprocess.Popen] = []
    asked: list[int] = []

    def on_stop(signum, frame) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        asked.append(signum)
        if len(asked) > 1 and child:
            print(f"{name} again: killing the run's processes", file=sys.stderr, flush=True)
            _kill_tree(child[0].pid)
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / STOP_FILE).write_text(f"{name} to the launcher (pid {os.getpid()})\n")
        print(f"\n{name}: every process stops after this step, once a checkpoint is written ({name} again to kill "
              "them at once)", file=sys.stderr, flush=True)

    print(f"launching: {plan.describe()}", flush=True)
    before = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    began = time.time()
    try:
        code = call_teed(plan.command, {**os.environ, **plan.env}, out / "recipe.resolved.yaml", child.append,
                         own_group=True)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if code != 0 and _mtime(out / "recipe.resolved.yaml") >= began - 0.5:  # the run had started: not a refused recipe
        print(failure_message(recipe, code, command), file=sys.stderr, flush=True)
    return code


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it: torchrun starts each rank in a session of its own, so a process
    group signal would miss them. The launcher first, so it does not react to its ranks' deaths."""
    import psutil  # accelerate's dependency

    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def failure_message(recipe: Recipe, code: int, command: list[str]) -> str:
    """One closing line for a multi-process run that failed: exit code, last complete checkpoint, the --resume command."""
    out = Path(recipe.training.output_dir)
    complete = [c for c in checkpoints(out) if not missing_resume_files(c, recipe.training.save_only_model)]
    head = (f"fai-rl-train: the run failed (exit code {code}): a process ended early (killed, out of memory, or the "
            "error above) and the others were stopped with it.")
    if not complete:
        return (f"{head} No complete checkpoint in {out}; start again with training.overwrite_output_dir=true "
                "(or another output_dir).")
    again, skip = [], False
    for arg in command:  # the command without its own --resume [PATH]: the latest complete checkpoint is the one
        if skip and not arg.startswith("-") and "=" not in arg:
            skip = False
            continue
        skip = arg == "--resume"
        if not skip and not arg.startswith("--resume="):
            again.append(arg)
    again.append("--resume")
    return f"{head} Last complete checkpoint: {complete[-1]}\ncontinue with: {shlex.join(again)}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
            env={**os.environ, "PYTHONUNBUFFERED": "1", LOG_ENV: str(log)},  # its output is this log already
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid, log, pid_file
