"""fai-rl-train as a user meets it: exit codes, messages without tracebacks, --dry-run, --nohup, launching."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe

from fai_rl.cli.launch import plan_launch
from fai_rl.config import load_recipe
from fai_rl.errors import BackendError


def assert_clean_failure(proc, output_dir: Path, *expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert not output_dir.exists(), f"{output_dir} was created by a failed run"


def test_bad_recipe_exits_2_listing_every_problem_and_creates_nothing(write_recipe, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(out)
    recipe["training"]["lerning_rate"] = 1e-3
    recipe["training"]["algorithm"] = "sfft"
    path = write_recipe(recipe)
    proc = run_cli("--recipe", str(path), "training.max_steps=ten")
    assert_clean_failure(
        proc, out,
        "the recipe has 3 errors:",
        "training.lerning_rate: unknown key; did you mean training.learning_rate?",
        f"{path}:",
        "'sfft' is not one of sft|cpt|dpo|ppo|grpo|gspo|rloo; did you mean 'sft'?",
        "command line: training.max_steps: 'ten' (str) is not valid",
    )


@pytest.mark.parametrize("flag", [[], ["--nohup"]])
def test_hostile_override_runs_nothing_and_fails_validation(write_recipe, tmp_path, flag):
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    path = write_recipe(tiny_recipe(out))
    hostile = [
        f"training.max_steps=1; touch {marker}",
        f"training.seed=$(touch {marker})",
        f"training.logging_steps=`touch {marker}`",
    ]
    proc = run_cli(*flag, "--recipe", str(path), *hostile)
    assert_clean_failure(proc, out, "the recipe has 3 errors:")
    time.sleep(0.5)
    assert not marker.exists()


def test_shell_text_in_a_string_value_stays_text(write_recipe, tmp_path):
    marker = tmp_path / "pwned"
    path = write_recipe(tiny_recipe(tmp_path / "run"))
    proc = run_cli("--recipe", str(path), "--dry-run", "data.max_length=256",
                   f"data.system_prompt=$(touch {marker}); `touch {marker}`")
    assert proc.returncode == 0, proc.stderr
    assert f"<|im_start|>system\\n$(touch {marker}); `touch {marker}`<|im_end|>" in proc.stdout
    assert not marker.exists()


def test_bad_data_row_is_named_by_file_line_and_nothing_is_written(write_recipe, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(
        '{"prompt": "What is 1 + 1?", "answer": "2"}\n'
        '{"prompt": "What is 2 + 2?", "answer": ""}\n'
        '{"prompt": "What is 3 + 3?" "answer": "6"}\n'
    )
    out = tmp_path / "run"
    recipe = tiny_recipe(out)
    recipe["data"]["datasets"] = [{"name": str(data)}]
    proc = run_cli("--recipe", str(write_recipe(recipe)))
    assert_clean_failure(proc, out, f"{data}:3: not valid JSON")
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "What is 2 + 2?", "answer": ""}\n')
    proc = run_cli("--recipe", str(write_recipe(recipe)))
    assert_clean_failure(proc, out, f"{data}:2: 'answer' must be non-empty text")


def test_dry_run_shows_examples_loss_mask_stats_recipe_and_launch(write_recipe, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--recipe", str(write_recipe(tiny_recipe(out))), "--dry-run", "--verbose",
                   "data.system_prompt=Be brief.")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "recipe OK" in text and "data.system_prompt='Be brief.'" in text.split("# data")[0]  # the short header
    assert "# resolved recipe (what recipe.resolved.yaml will hold)" in text and "system_prompt: Be brief." in text
    assert "data.datasets[0] = completion" in text
    assert "train: 256 examples; tokens min" in text and "eval:  64 examples" in text
    # the rendered example: system + user carry no loss, the answer and its end-of-turn token do
    example = next(line for line in text.splitlines() if line.startswith("<|im_start|>system"))
    assert "<|im_start|>system\\nBe brief.<|im_end|>" in example
    masked = example.split("[[", 1)[1].split("]]", 1)[0]
    assert masked.rstrip("\\n").endswith("<|im_end|>") and masked.split("<|im_end|>")[0].isdigit()
    assert "one process on CPU (no GPU found)" in text and "dry run: nothing trained." in text
    assert not out.exists()


def test_more_gpus_than_the_host_has_is_refused(write_recipe, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--recipe", str(write_recipe(tiny_recipe(out))), "--num-gpus", "2", env={"CUDA_VISIBLE_DEVICES": ""})
    assert_clean_failure(proc, out, "--num-gpus: asked for 2 GPUs but this host has 0")


def test_launch_plans_pin_one_gpu_or_build_the_accelerate_command(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    recipe = load_recipe(write_recipe(tiny_recipe(tmp_path / "run")))
    one = plan_launch(recipe, 1, ["--recipe", "r.yaml"])
    assert one.command is None and one.env == {"CUDA_VISIBLE_DEVICES": "3"}
    ddp = plan_launch(recipe, 4, ["--recipe", "r.yaml", "training.seed=1"])
    cmd = ddp.command
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-5:] == ["--module", "fai_rl.cli.train", "--recipe", "r.yaml", "training.seed=1"]
    ds_config = tmp_path / "zero2.json"
    ds_config.write_text("{}")
    assert "accelerate.commands.launch --num_processes 2" in plan_launch(recipe, 2, []).describe()
    recipe.training.deepspeed_config = str(ds_config)
    if importlib.util.find_spec("deepspeed") is None:  # the CPU CI machine: said before any process starts
        with pytest.raises(BackendError, match="needs deepspeed; install it with pip install 'fai-rl\\[deepspeed\\]'"):
            plan_launch(recipe, 2, ["--recipe", "r.yaml"])
    else:
        ds = plan_launch(recipe, 2, ["--recipe", "r.yaml"]).command
        assert ds[ds.index("--deepspeed_config_file") + 1] == str(ds_config) and "--use_deepspeed" in ds


def test_existing_run_needs_resume_or_overwrite(write_recipe, tmp_path):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")
    proc = run_cli("--recipe", str(write_recipe(tiny_recipe(out))))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training.output_dir:" in proc.stderr and "already holds a run" in proc.stderr
    assert "--resume" in proc.stderr and "overwrite_output_dir" in proc.stderr


def test_resume_without_checkpoint_or_from_weights_only_is_refused(write_recipe, tmp_path):
    out = tmp_path / "run"
    path = write_recipe(tiny_recipe(out))
    proc = run_cli("--recipe", str(path), "--resume")
    assert proc.returncode == 2 and "no checkpoint-N in training.output_dir" in proc.stderr
    weights_only = out / "checkpoint-4"
    weights_only.mkdir(parents=True)
    (weights_only / "model.safetensors").write_bytes(b"")
    proc = run_cli("--recipe", str(path), "--resume", str(weights_only))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds weights only" in proc.stderr and "resume is impossible" in proc.stderr


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child (it is not: it runs in its own session, started by the CLI)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.5)
    os.killpg(pid, signal.SIGKILL)
    raise AssertionError(f"detached run {pid} still running after {timeout}s")


def test_every_run_writes_its_log_header_and_card_and_a_refused_run_none(write_recipe, tmp_path):
    out = tmp_path / "run"
    path = write_recipe(tiny_recipe(out))
    # model.lora_r without use_lora: a FAI-RL key this run ignores, said in a note and kept out of the header
    proc = run_cli("--recipe", str(path), "training.max_steps=2", "training.eval_steps=null", "model.lora_r=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (log,) = (out / "logs").glob("train-*.log")
    assert f"log: {log}" in proc.stdout
    text = log.read_text()
    # what the console showed from the start (the notes and the header) to the closing table
    assert "# resolved recipe" in text and "artefacts in" in text
    assert all(line in proc.stdout + proc.stderr for line in text.splitlines())
    assert "note: model.lora_r: no effect without model.use_lora" in proc.stdout
    # the header: short, what runs, the changed keys; the whole recipe is in output_dir
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# resolved recipe"))
    labels = (" ", "algorithm:", "model:", "data:", "steps:", "precision:", "performance:", "changed:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(labels))
    header = "\n".join(lines[start:end])
    assert end - start < 30, header
    assert "sft (supervised fine-tuning), locally, 1 process" in header and "model:       fai-rl/tiny" in header
    assert "train 256 rows from fai-rl/arithmetic" in header and "eval 64 rows" in header
    assert "steps:       2 (training.max_steps)" in header and "precision:   float32" in header
    assert "performance: gradient_checkpointing off" in header and "training.learning_rate=0.003" in header
    for ignored in ("lora_r", "cliprange", "num_generations", "tinker", "judge", "beta", "s3", "wandb"):
        assert ignored not in header, ignored
    assert len((out / "recipe.resolved.yaml").read_text().splitlines()) > 3 * (end - start)
    # the closing table: SFT's headline metrics; the run card is ours, not TRL's (which a checkpoint would write)
    assert "eval_loss" in proc.stdout.split("metric ", 1)[1] and list(out.glob("checkpoint-*"))
    card = (out / "README.md").read_text()
    assert "`fai-rl/tiny` post-trained with fai-rl by supervised fine-tuning for 2 steps" in card
    assert "None" not in card and "generated_from_trainer" not in card
    assert "| eval_loss |" in card and "`fai-rl/arithmetic` (split `train`, at most 256 rows)" in card
    assert f"fai-rl-train --recipe {path} training.max_steps=2" in card
    refused = tmp_path / "refused"
    proc = run_cli("--recipe", str(path), f"training.output_dir={refused}", "data.datasets[0].name=missing.jsonl")
    assert proc.returncode == 2 and not refused.exists()


def test_nohup_detaches_writes_log_and_pid_and_completes(write_recipe, tmp_path):
    out = tmp_path / "run"
    start = time.time()
    proc = run_cli("--nohup", "--recipe", str(write_recipe(tiny_recipe(out))))
    assert proc.returncode == 0, proc.stderr
    assert time.time() - start < 30  # returned without waiting for training
    assert "started in the background (pid" in proc.stdout and "tail -f" in proc.stdout and "kill" in proc.stdout
    (log,) = (out / "logs").glob("train-*.log")
    (pid_file,) = (out / "logs").glob("train-*.pid")
    pid = int(pid_file.read_text())
    assert os.getsid(pid) == pid  # its own session: closing the terminal does not stop it
    _wait_for_exit(pid, timeout=300)
    text = log.read_text()
    assert "eval_loss" in text and "artefacts in" in text, text[-2000:]
    assert (out / "final" / "model.safetensors").exists() and (out / "summary.json").exists()
