"""A FAI-RL-format recipe launched as FAI-RL's README does, stopped, resumed, one rank killed, resumed again (issue 20).

    fai-rl-train --recipe recipes/training/sft/llama3_3B_lora.yaml --num-gpus 2 --nohup  k=v ...   # 1. detached
    kill <pid it printed>            # the launcher writes output_dir/STOP: every rank checkpoints and stops
    fai-rl-train ... --resume        # 2. then kill -9 of rank 1 mid-run: the job ends with one message naming
                                     #    the last complete checkpoint and the --resume command
    <that command>                   # 3. runs to the end

The shipped recipe is used as it is; the overrides only point it at a small model (the built-in tiny one, or --model),
local data in its Alpaca columns (instruction/input/output, so its prompt templates apply) and a short run with a
checkpoint every 2 steps. Checks: each phase ends as said, in bounded time; every step is logged once in
metrics.jsonl; the steps the killed run had logged past its last checkpoint come again with the same loss, and every
step's loss equals an uninterrupted run's (rel 1e-6 on CPU float32, where both held exactly on 2 processes; within
--tolerance on GPUs, where bf16 kernels may differ). Prints and writes resume.json.

    python3 scripts/multi_gpu_resume_check.py --out $OUT/resume --steps 400        # 2 GPUs
    python3 scripts/multi_gpu_resume_check.py --out /tmp/resume --cpu             # 2 CPU processes (gloo; CI runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "training" / "sft" / "llama3_3B_lora.yaml"


def write_data(path: Path) -> Path:
    """Additions in the Alpaca columns the FAI-RL recipe's templates read."""
    rows = [{"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b)}
            for a in range(32) for b in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(out: Path) -> dict[int, list[float]]:
    """step -> every loss logged for it in metrics.jsonl."""
    found: dict[int, list[float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            found.setdefault(row["step"], []).append(row["loss"])
    return found


def wait_for_step(out: Path, step: int, proc: subprocess.Popen | None = None, pid: int | None = None,
                  timeout: float = 300) -> None:
    """Until `out` has logged step `step`; AssertionError when the run (`proc`, or the detached `pid`) ends first."""
    from fai_rl.cli.runlock import pid_alive

    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and max(losses(out), default=0) >= step:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}:\n{proc.stdout.read()[-3000:]}")
        if pid is not None and not pid_alive(pid):
            log = "".join(p.read_text() for p in (out / "logs").glob("train-*.log"))
            raise AssertionError(f"the detached run ended before step {step}:\n{log[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} logged within {timeout} s")


def check(out: Path, gpus: int = 2, cpu: bool = False, model: str = "fai-rl/tiny", steps: int = 40,
          tolerance: float = 0.0, straight: bool = False) -> dict:
    """Run the three phases in `out` (and with `straight` an uninterrupted run to compare every step's loss with);
    AssertionError naming what failed; the measurements."""
    import psutil

    from fai_rl.cli.runlock import pid_alive
    from fai_rl.cli.runs import run_status

    run = out / "run"
    out.mkdir(parents=True, exist_ok=True)
    data = write_data(out / "additions.jsonl")
    where = ["--num-gpus", "0", "--num-processes", str(gpus)] if cpu else ["--num-gpus", str(gpus)]
    launch = [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(RECIPE), *where,
              f"model.base_model_name={model}", f"data.datasets[0].name={data}", "data.max_length=96",
              "data.dataset_num_proc=1", f"training.output_dir={run}", f"training.max_steps={steps}",
              "training.save_steps=2", "training.logging_steps=1", "training.warmup_steps=0",
              "training.per_device_train_batch_size=4", "training.gradient_accumulation_steps=1",
              "training.learning_rate=1e-3", "training.dataloader_num_workers=0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"} if cpu else {})}
    found: dict = {"processes": gpus, "device": "cpu" if cpu else "gpu", "steps": steps}

    # 1. --nohup, then SIGTERM to the launcher it printed: every rank stops after one step with a checkpoint
    began = time.time()
    started = subprocess.run([*launch, "--nohup"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(re.search(r"started in the background \(pid (\d+)\)", started.stdout).group(1))
    wait_for_step(run, 3, pid=pid)
    os.kill(pid, signal.SIGTERM)
    asked = time.time()
    while pid_alive(pid) and time.time() < asked + 300:
        time.sleep(0.2)
    assert not pid_alive(pid), "the launcher did not end within 300 s of SIGTERM"
    status = run_status(run)
    found.update(stopped_at=status["step"], stop_s=round(time.time() - asked, 1), phase1_s=round(time.time() - began))
    assert status["state"] == "stopped" and status["step"] < steps, status
    text = "".join(p.read_text() for p in (run / "logs").glob("train-*.log"))
    checkpoint = run / f"checkpoint-{status['step']}"
    assert f"stopped at step {status['step']} on request; checkpoint: {checkpoint}" in text, text[-3000:]
    assert not (run / "STOP").exists()

    # 2. --resume, then SIGKILL to rank 1: the whole job ends, one message names the checkpoint and the command
    began = time.time()
    proc = subprocess.Popen([*launch, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    try:
        wait_for_step(run, found["stopped_at"] + 3, proc)
        (rank1,) = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        killed = time.time()
        rank1.kill()
        text = proc.communicate(timeout=300)[0]
        found["job_ended_s_after_kill"] = round(time.time() - killed, 1)
    finally:
        proc.kill()
    assert proc.returncode != 0, text[-3000:]
    assert text.count("Last complete checkpoint:") == 1, text[-3000:]
    found["last_checkpoint"] = int(re.search(r"Last complete checkpoint: .*checkpoint-(\d+)\n", text).group(1))
    again = re.search(r"continue with: (fai-rl-train .* --resume)\n", text).group(1)
    assert run_status(run)["state"] == "failed"
    killed_run = losses(run)
    found.update(killed_run_last_step=max(killed_run), phase2_s=round(time.time() - began),
                 rerun_steps=[s for s in killed_run if s > found["last_checkpoint"]])
    assert found["stopped_at"] < found["last_checkpoint"] <= max(killed_run)

    # 3. the command the message gave: the run finishes, every step logged once, the re-run steps repeat
    began = time.time()
    argv = shlex.split(again)
    done = subprocess.run([sys.executable, "-m", "fai_rl.cli.train", *argv[1:]], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = losses(run)
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(after) == list(range(1, steps + 1)) and all(len(v) == 1 for v in after.values()), after
    assert summary["resumed_from_step"] == found["last_checkpoint"] and summary["global_step"] == steps
    assert summary["processes"] == gpus and (run / "final" / "adapter_config.json").exists()
    diffs = [abs(after[s][0] - killed_run[s][0]) / abs(killed_run[s][0]) for s in killed_run]
    found.update(max_rel_diff_rerun_steps=max(diffs), first_loss=after[1][0], last_loss=after[steps][0],
                 phase3_s=round(time.time() - began))
    assert found["max_rel_diff_rerun_steps"] <= tolerance, found
    if straight:  # the same run without interruption: the stopped, killed and resumed one must match it step by step
        began = time.time()
        plain = [a.replace(f"training.output_dir={run}", f"training.output_dir={out / 'straight'}") for a in launch]
        done = subprocess.run(plain, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ref = losses(out / "straight")
        found.update(max_rel_diff_vs_straight=max(abs(after[s][0] - ref[s][0]) / abs(ref[s][0]) for s in ref),
                     straight_s=round(time.time() - began))
        assert sorted(ref) == sorted(after) and found["max_rel_diff_vs_straight"] <= tolerance, found
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpus", type=int, default=2, help="GPUs (or with --cpu, CPU processes)")
    parser.add_argument("--cpu", action="store_true", help="CPU processes over gloo instead of GPUs")
    parser.add_argument("--model", default="fai-rl/tiny", help="model.base_model_name (default: the built-in tiny)")
    parser.add_argument("--steps", type=int, default=None, help="steps (default 40 on CPU, 400 on GPUs, where the "
                        "tiny model's steps are too quick to stop mid-run otherwise)")
    parser.add_argument("--no-straight", action="store_true", help="skip the uninterrupted run that every step's "
                        "loss is compared with")
    parser.add_argument("--tolerance", type=float, default=None, help="largest relative difference of a re-run "
                        "step's loss (default 0 on CPU, 1e-2 on GPUs)")
    args = parser.parse_args()
    steps = args.steps or (40 if args.cpu else 400)
    tolerance = args.tolerance if args.tolerance is not None else (1e-6 if args.cpu else 1e-2)
    try:
        found = check(args.out, args.gpus, args.cpu, args.model, steps, tolerance, not args.no_straight)
        found["ok"] = True
    except AssertionError as e:
        found = {"ok": False, "error": str(e)[-3000:]}
    (args.out / "resume.json").write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(found, indent=2))
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
