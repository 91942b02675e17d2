"""fai-rl-runs against a real --nohup run of the SFT quickstart: listed while it runs, stopped cleanly (a checkpoint
first, state `stopped`), continued with --resume to the end; its log holds plain progress lines and none of the
silenced library noise; TensorBoard's own reader loads the scalars both legs wrote (fai_rl.progress, fai_rl.cli.runs,
fai_rl.tensorboard_log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

from fai_rl.progress import Progress, read_state

QUICKSTART = str(ROOT / "recipes" / "quickstart" / "sft.yaml")


def runs(*args: str) -> subprocess.CompletedProcess:
    """fai-rl-runs as a user runs it."""
    return subprocess.run([sys.executable, "-m", "fai_rl.cli.runs", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def _row(listing: str, run) -> list[str]:
    (line,) = [line for line in listing.splitlines() if line.startswith(str(run))]
    return line.split()


def test_a_nohup_run_is_listed_stopped_with_a_checkpoint_and_resumed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs" / "sft"
    # LoRA: peft reads transformers' deprecated is_gradient_checkpointing, whose FutureWarning fai_rl.noise silences
    common = [f"training.output_dir={out}", "training.logging_steps=5", "training.eval_steps=null",
              "tensorboard.enabled=true", "model.use_lora=true"]
    env = {"OMP_NUM_THREADS": "1"}
    started = run_cli("--nohup", "--recipe", QUICKSTART, "training.max_steps=5000", *common, env=env)
    assert started.returncode == 0 and "fai-rl-runs stop" in started.stdout, started.stderr
    deadline = time.time() + 240
    while (read_state(out) or {}).get("state") != "running" or read_state(out)["step"] < 6:
        assert time.time() < deadline, (out / "logs").glob("*.log")
        time.sleep(0.3)
    row = _row(runs("list", str(tmp_path / "runs")).stdout, out)
    assert row[1] == "running" and row[2].endswith("/5000") and ":" in row[3], row  # state, step, an ETA

    stopped = runs("stop", str(out))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    step = read_state(out)["step"]
    assert f"stopped at step {step}; checkpoint: {out / f'checkpoint-{step}'}" in stopped.stdout
    assert (out / f"checkpoint-{step}" / "trainer_state.json").exists() and not (out / "final").exists()
    assert _row(runs("list", str(tmp_path / "runs")).stdout, out)[1:3] == ["stopped", f"{step}/5000"]
    (log,) = (out / "logs").glob("train-*.log")
    text = log.read_text()
    assert f"stopped at step {step} on request" in text and "--resume" in text
    assert "\r" not in text and "step 5/5000 [0%]" in text and "it/s" in text  # plain progress lines in a file
    assert "gemm_4bit_forward" not in text and "is_gradient_checkpointing" not in text  # fai_rl.noise

    end = step + 5
    resumed = run_cli("--recipe", QUICKSTART, f"training.max_steps={end}", *common, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step {end}/{end} [100%]" in resumed.stdout
    assert _row(runs("list", str(tmp_path / "runs")).stdout, out)[1:3] == ["finished", f"{end}/{end}"]
    assert (out / "final").is_dir() and not (out / "STOP").exists()
    assert "[fai-rl-runs: the run is finished]" in runs("follow", str(out), "--lines", "3").stdout
    missing = runs("list", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "DIR: " in missing.stderr and "Traceback" not in missing.stderr

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["loss"] for r in rows if "loss" in r}
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = {e.step: e.value for e in events.Scalars("loss")}
    assert set(logged) <= set(scalars) and min(logged) < step < max(logged)  # both legs, every logged step
    assert all(scalars[s] == pytest.approx(v, rel=1e-6) for s, v in logged.items())
    assert "eval_loss" in events.Tags()["scalars"]


def test_the_progress_line_says_step_eta_rate_and_headline_and_the_state_file_follows(tmp_path, capsys):
    progress = Progress(tmp_path)
    progress.prepare(("eval_loss", "loss"))
    assert read_state(tmp_path)["state"] == "starting"
    progress.begin(total=100, initial=0)
    progress.started -= 20.0  # 20 s spent on 10 steps: 0.5 it/s, 180 s to go
    progress.metrics(10, {"loss": 1.5, "grad_norm": 3.0}, total=100)
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 10/100 [10%]  0:20<3:00  2.0 s/it  loss 1.5"), line
    assert "grad_norm" not in line
    state = read_state(tmp_path)
    assert state["state"] == "running" and state["step"] == 10 and 170 < state["eta_s"] < 190
    assert state["headline"] == {"loss": 1.5} and state["pid"] == os.getpid()
    progress.finish("finished")
    assert read_state(tmp_path)["state"] == "finished"


@pytest.mark.tinker
@pytest.mark.slow
def test_sigterm_stops_a_tinker_run_at_a_saved_state_that_resume_continues(tmp_path, tinker_server, monkeypatch):
    import signal
    import threading

    from fai_rl.cli.train import main

    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    out = tmp_path / "tinker-sft"
    common = ["--recipe", QUICKSTART, "training.backend=tinker", f"tinker.base_url={tinker_server.base_url}",
              "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8", f"training.output_dir={out}",
              "training.eval_steps=null", "training.logging_steps=1", "tinker.download_final=false",
              "data.eval_datasets=[]", "training.warmup_steps=0"]

    def terminate_at_step_2():  # what `kill PID` does to a --nohup run
        deadline = time.time() + 240
        while ((read_state(out) or {}).get("step") or 0) < 2 and time.time() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_at_step_2, daemon=True).start()
    assert main([*common, "training.max_steps=200"]) == 0
    state = read_state(out)
    assert state["state"] == "stopped" and 2 <= state["step"] < 200
    saved = [c for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"] if c["kind"] == "state"]
    assert saved[-1]["step"] == state["step"]  # the state the stop saved, the one --resume takes
    assert not (out / "final").exists() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    end = state["step"] + 1
    assert main([*common, f"training.max_steps={end}", "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == state["step"] and summary["global_step"] == end
    assert read_state(out)["state"] == "finished"
