"""Several processes on CPU (gloo), through the real launcher: DDP for every algorithm, DeepSpeed ZeRO-2 and ZeRO-3,
two "nodes" on 127.0.0.1, resume under DeepSpeed; and the launch plans and recipe errors that need no process.

Every launch is `fai-rl-train --num-gpus 0 --num-processes 2`, the CPU form of `--num-gpus 2`: the same accelerate
command, torchrun rendezvous and trainer code, with gloo for NCCL. Runs are a few steps on the built-in tiny models,
one torch thread per process; each launch costs ~15-20 s of imports on 2 cores, so each test launches once or twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_recipe

from fai_rl.cli.launch import Nodes, plan_launch
from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.config.deepspeed import SHIPPED, SHIPPED_DIR, deepspeed_config_path, resolve_deepspeed_config
from fai_rl.errors import RecipeError

CPU_ENV = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------------------------------------
# helpers


def write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """fai-rl-train as a user runs it, on CPU."""
    return subprocess.run([sys.executable, "-m", "fai_rl.cli.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **CPU_ENV})


def launch(recipe_path: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    proc = cli("--recipe", str(recipe_path), "--num-gpus", "0", "--num-processes", str(processes), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sft_recipe(out: Path, **training) -> dict:
    base = tiny_recipe(out)["training"]
    recipe = tiny_recipe(out, training={**base, "max_steps": 4, "per_device_train_batch_size": 8, "save_steps": 2,
                                        "logging_steps": 1, "lr_scheduler_type": "constant", **training})
    recipe["data"]["datasets"][0]["max_samples"] = 64
    recipe["data"]["eval_datasets"][0]["max_samples"] = 16
    recipe["training"]["per_device_eval_batch_size"] = 16
    return recipe


def rl_recipe(out: Path, algorithm: str, **training) -> dict:
    """GRPO/GSPO/PPO on the built-in tiny-sft start and single-digit prompts, 3 steps of 4 prompts per process."""
    t = {"algorithm": algorithm, "output_dir": str(out), "learning_rate": 1e-4, "lr_scheduler_type": "constant",
         "max_steps": 3, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "max_completion_length": 4,
         "logging_steps": 1, "save_steps": 2, "bf16": False}
    t.update({"num_ppo_epochs": 2} if algorithm == "ppo" else {"num_generations": 4})
    return {
        "model": {"base_model_name": "fai-rl/tiny-sft"},
        "data": {"datasets": [{"name": "fai-rl/digits", "split": "train", "max_samples": 32}]},
        "training": {**t, **training},
        "rewards": [{"function": "exact_match"}],
    }


def assert_two_process_run(out: Path, proc: subprocess.CompletedProcess, algorithm: str) -> dict:
    s = summary(out)
    assert s["processes"] == 2 and s["algorithm"] == algorithm and s["global_step"] >= 3
    assert (out / "final" / "fai_rl.json").exists() and not list(out.glob(".final*"))
    assert proc.stdout.count("# resolved recipe") == 1  # one main process wrote and printed
    return s


# --------------------------------------------------------------------------------------------------------------------
# DDP, every algorithm


@pytest.mark.slow
def test_sft_under_ddp_learns_with_two_processes(tmp_path):
    out = tmp_path / "sft"
    proc = launch(write(tmp_path, sft_recipe(out)))
    assert "2 processes on CPU (gloo) via accelerate" in proc.stdout and "--multi_gpu" in proc.stdout
    assert_two_process_run(out, proc, "sft")
    # one log, written by the launching process from its ranks' output, from the run's start to its closing table
    (log,) = (out / "logs").glob("train-*.log")
    assert f"log: {log}" in proc.stdout
    text = log.read_text()
    assert text.count("# resolved recipe") == 1 and "artefacts in" in text and "eval_loss" in text
    evals = [m["eval_loss"] for m in metrics(out) if "eval_loss" in m]
    assert evals[-1] < evals[0]
    assert (out / "checkpoint-4" / "optimizer.pt").exists() and not (out / "checkpoint-4" / "latest").exists()


@pytest.mark.slow
def test_dpo_under_ddp_on_two_nodes_over_loopback(tmp_path):
    """Two "nodes" on 127.0.0.1, one CPU process each: two launchers meet at the main node's port (torchrun
    rendezvous), as on two machines; node 1 writes nothing of its own."""
    out = tmp_path / "dpo"
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny-sft"},
        "data": {"datasets": [{"name": "fai-rl/digits-pairs", "split": "train", "max_samples": 32}],
                 "eval_datasets": [{"name": "fai-rl/digits-pairs", "split": "test", "max_samples": 8}],
                 "max_length": 36},  # cuts the last token of the 37-token sequences: counted and said once
        "training": {"algorithm": "dpo", "output_dir": str(out), "learning_rate": 1e-4, "max_steps": 3,
                     "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "logging_steps": 1,
                     "save_steps": 100, "bf16": False},
    }
    path, port = write(tmp_path, recipe), str(free_port())
    nodes = [
        subprocess.Popen([sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(path), "--num-gpus", "0",
                          "--num-processes", "1", "--num-nodes", "2", "--node-rank", str(rank), "--main-process-ip",
                          "127.0.0.1", "--main-process-port", port], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=ROOT, env={**os.environ, **CPU_ENV})
        for rank in (0, 1)
    ]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for rank, log in enumerate(logs):
        assert f"on node {rank} of 2 (2 processes in all)" in log
        assert f"--num_machines 2 --machine_rank {rank} --main_process_ip 127.0.0.1 --main_process_port {port}" in log
    assert "# resolved recipe" in logs[0] and "# resolved recipe" not in logs[1]
    s = summary(out)
    assert s["processes"] == 2 and s["global_step"] == 3
    evals = [m for m in metrics(out) if "eval_rewards/accuracies" in m]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    cut = [m for m in metrics(out) if "truncated_pairs" in m]  # one step-0 row, from the main process only
    assert [m["step"] for m in cut] == [0] and 0 < cut[0]["truncated_pairs"] <= 40, cut
    assert f"note: {cut[0]['truncated_pairs']:.0f} of 40 preference pairs (train and eval) longer than " \
           f"data.max_length=36 tokens were cut from the right ({cut[0]['truncated_pair_tokens']:.0f} tokens" in logs[0]
    assert "preference pairs (train and eval) longer than" not in logs[1]


@pytest.mark.slow
def test_gspo_under_ddp_samples_groups_across_two_processes(tmp_path):
    out = tmp_path / "gspo"
    # 2 prompts' completions per process: a group of 4 spans both processes' batches of 4 (8 per generation round).
    # data.max_length 32 cuts one token off every 33-token digits prompt: each process cuts the copies it holds, the
    # counts are gathered and taken once per prompt (fai_rl.backends.local.prompt_cut): 1 prompt a step (its 4
    # completions 2 + 2 on the two processes), 1 token
    recipe = rl_recipe(out, "gspo", per_device_train_batch_size=2)
    recipe["data"]["max_length"] = 32
    proc = launch(write(tmp_path, recipe))
    assert_two_process_run(out, proc, "gspo")
    rounds = [m for m in metrics(out) if "reward" in m]
    cut = [(m["step"], m.get("truncated_prompts"), m.get("truncated_prompt_tokens")) for m in rounds]
    assert cut == [(m["step"], 1, 1) for m in rounds], cut
    assert all("reward" in m for m in metrics(out) if "loss" in m)
    assert proc.stdout.count(f"note: {len(rounds)} of {len(rounds)} train prompts sampled longer than "
                             "data.max_length=32") == 1  # the main process's line


@pytest.mark.slow
def test_ppo_under_ddp_with_two_processes(tmp_path):
    out = tmp_path / "ppo"
    proc = launch(write(tmp_path, rl_recipe(out, "ppo")))
    assert_two_process_run(out, proc, "ppo")
    rows = [m for m in metrics(out) if "reward" in m]
    assert [m["step"] for m in rows] == [1, 2, 3] and rows[-1]["kl"] != 0  # the policy moved off the reference
    assert (out / "checkpoint-2" / "optimizer.pt").exists()


# --------------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-2 and ZeRO-3 (shipped configs, "auto" values filled from the recipe), and resume under them


@pytest.mark.slow
def test_grpo_under_zero2(tmp_path):
    out = tmp_path / "grpo"
    proc = launch(write(tmp_path, rl_recipe(out, "grpo")), "training.deepspeed_config=zero2")
    assert "--use_deepspeed --deepspeed_config_file" in proc.stdout and "zero2.json" in proc.stdout
    assert_two_process_run(out, proc, "grpo")
    ckpt = out / "checkpoint-2"
    assert (ckpt / "latest").read_text().strip() == "global_step2"
    assert len(list((ckpt / "global_step2").glob("*optim_states.pt"))) == 2  # one optimizer shard per process


@pytest.mark.slow
def test_sft_under_zero3_resumes_exactly(tmp_path):
    """Run 4 steps under ZeRO-3, then resume from the step-2 DeepSpeed checkpoint: steps 3-4 are the same steps."""
    out = tmp_path / "sft"
    path = write(tmp_path, sft_recipe(out))
    launch(path, "training.deepspeed_config=zero3")
    straight = {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}
    from transformers import AutoModelForCausalLM

    from fai_rl.models.load import resolve_model_path

    final = AutoModelForCausalLM.from_pretrained(out / "final")  # the ZeRO-3 shards were gathered into final/
    tiny = AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny"))
    assert final.num_parameters() == tiny.num_parameters()
    shutil.rmtree(out / "checkpoint-4")
    launch(path, "training.deepspeed_config=zero3", "--resume")
    resumed = {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}
    assert summary(out)["resumed_from_step"] == 2
    assert [resumed[s] for s in (3, 4)] == pytest.approx([straight[s] for s in (3, 4)], rel=1e-5)


@pytest.mark.slow
def test_ppo_under_zero3_resumes_exactly(tmp_path):
    """PPO's own loop under ZeRO-3: shards gathered for generation and for the saved weights; the optimizer shards
    come back from DeepSpeed's checkpoint, so the resumed steps repeat the uninterrupted ones."""
    out = tmp_path / "ppo"
    path = write(tmp_path, rl_recipe(out, "ppo", max_steps=4))
    launch(path, "training.deepspeed_config=zero3")
    straight = [m for m in metrics(out) if "reward" in m]
    assert (out / "checkpoint-2" / "latest").exists() and (out / "checkpoint-2" / "value_head.pt").exists()
    assert (out / "final" / "model.safetensors").stat().st_size > 1_000_000
    launch(path, "training.deepspeed_config=zero3", "--resume", str(out / "checkpoint-2"))
    resumed = [m for m in metrics(out) if "reward" in m]
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], straight[2:], strict=True):
        for key in ("reward", "kl", "policy_loss", "value_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["step"], key)


# --------------------------------------------------------------------------------------------------------------------
# launch plans and recipe errors (no process started)


def test_launch_plans_for_gpus_nodes_and_deepspeed(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    recipe = load_recipe(write(tmp_path, sft_recipe(tmp_path / "run")))
    two_nodes = Nodes(count=2, rank=1, main_ip="10.0.0.1")
    cmd = plan_launch(recipe, 8, ["--recipe", "r.yaml"], nodes=two_nodes).command
    flags = " ".join(cmd)
    # accelerate counts processes over all nodes; DDP with the recipe's precision (bf16 false here)
    assert "--num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1 --main_process_port 29500" \
        in flags
    assert "--mixed_precision no --multi_gpu" in flags
    recipe.training.bf16 = None
    recipe.training.deepspeed_config = "zero3"
    ds = plan_launch(recipe, 8, ["--recipe", "r.yaml"], nodes=two_nodes).command
    assert ds[ds.index("--deepspeed_config_file") + 1] == str(SHIPPED_DIR / "zero3.json")
    assert "--deepspeed_multinode_launcher standard" in " ".join(ds) and "--mixed_precision bf16" in " ".join(ds)
    one = plan_launch(recipe, 1, [])  # DeepSpeed on one GPU still goes through the launcher (ZeRO-offload)
    assert one.command is not None and "--num_processes 1" in " ".join(one.command)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu = plan_launch(recipe, 0, [], num_processes=2)
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "" and "ACCELERATE_USE_CPU" not in cpu.env  # DeepSpeed: its CPU backend
    recipe.training.deepspeed_config = None
    assert plan_launch(recipe, 0, [], num_processes=2).env["ACCELERATE_USE_CPU"] == "true"


@pytest.mark.parametrize(("flags", "message"), [
    (["--num-gpus", "2"], "--num-gpus: asked for 2 GPUs but this host has 0; pass --num-gpus 0"),  # (a dry run plans)
    (["--dry-run", "--num-nodes", "2", "--num-gpus", "0"], "--main-process-ip: needed with --num-nodes 2"),
    (["--dry-run", "--num-nodes", "2", "--node-rank", "2", "--main-process-ip", "10.0.0.1"],
     "--node-rank: 2 must be in [0, 1] for --num-nodes 2"),
    (["--dry-run", "--num-processes", "0", "--num-gpus", "0"], "--num-processes: 0 must be 1 or more"),
])
def test_bad_launch_flags_are_refused_with_the_fix(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "run"
    assert main(["--recipe", str(write(tmp_path, sft_recipe(out))), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_dry_run_prints_the_exact_launch_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "run"
    path = write(tmp_path, sft_recipe(out))
    assert main(["--recipe", str(path), "--dry-run", "--num-gpus", "0", "--num-processes", "2",
                 "training.deepspeed_config=recipes/deepspeed/zero2.json"]) == 0
    text = capsys.readouterr().out
    assert "2 processes on CPU (gloo) via accelerate:" in text
    assert (f"-m accelerate.commands.launch --num_processes 2 --num_machines 1 --main_process_port 0 "
            f"--mixed_precision no --use_deepspeed --deepspeed_config_file recipes/deepspeed/zero2.json --module "
            f"fai_rl.cli.train --recipe {path}") in text
    assert not out.exists()


def test_dry_run_plans_more_gpus_than_this_host_has_with_a_note(tmp_path, capsys, monkeypatch):
    # checking an 8-GPU recipe on a laptop: the batch rules count 8 processes, the launch is shown, nothing runs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "run"
    path = write(tmp_path, rl_recipe(out, "gspo", per_device_train_batch_size=1, num_generations=8))
    assert main(["--recipe", str(path), "--dry-run"]) == 2  # 1 completion per step on one process: not a group
    assert "training.num_generations" in capsys.readouterr().err
    assert main(["--recipe", str(path), "--dry-run", "--num-gpus", "8"]) == 0
    text = capsys.readouterr().out
    assert "this host has 0 GPUs; shown is the launch on a node with 8" in text
    assert "8 processes on 8 GPUs via accelerate" in text and "--num_processes 8" in text
    assert not out.exists()
    assert main(["--recipe", str(path), "--num-gpus", "8"]) == 2  # a real launch still needs the GPUs
    assert "asked for 8 GPUs but this host has 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_deepspeed_configs_take_their_auto_values_from_the_recipe(tmp_path, name):
    recipe = load_recipe(write(tmp_path, sft_recipe(tmp_path / "run", gradient_accumulation_steps=3,
                                                    max_grad_norm=0.5, deepspeed_config=name)))
    assert deepspeed_config_path(name) == SHIPPED_DIR / f"{name}.json"
    assert deepspeed_config_path(f"recipes/deepspeed/{name}.json").resolve() == SHIPPED_DIR / f"{name}.json"
    config = resolve_deepspeed_config(recipe, bf16=True)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (8, 3)
    assert config["gradient_clipping"] == 0.5 and config["bf16"]["enabled"] is True
    assert "auto" not in json.dumps(config) and "train_batch_size" not in config
    assert config["zero_optimization"]["stage"] == int(name[4])
    ppo = load_recipe(write(tmp_path, rl_recipe(tmp_path / "ppo", "ppo", per_device_train_batch_size=8,
                                                num_mini_batches=4, deepspeed_config=name), "ppo.yaml"))
    config = resolve_deepspeed_config(ppo, bf16=False)  # one optimizer step per mini-batch
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 1)


def test_known_bad_combinations_are_recipe_errors_naming_the_fix(tmp_path):
    def problems(recipe: dict, *overrides: str, processes: int = 1) -> str:
        with pytest.raises(RecipeError) as e:
            load_recipe(write(tmp_path, recipe), list(overrides), processes=processes)
        return str(e.value)

    sft = sft_recipe(tmp_path / "run")
    qlora = problems(sft, "model.use_lora=true", "model.load_in_4bit=true", "training.deepspeed_config=zero3")
    assert "model.load_in_4bit: true with ZeRO-3 (training.deepspeed_config 'zero3')" in qlora
    assert "use DDP (remove training.deepspeed_config) or training.deepspeed_config=zero2" in qlora
    load_recipe(write(tmp_path, sft), ["model.use_lora=true", "model.load_in_4bit=true",
                                       "training.deepspeed_config=zero2"])  # QLoRA + ZeRO-2 is fine

    grpo = rl_recipe(tmp_path / "grpo", "grpo", per_device_train_batch_size=2)
    vllm = problems(grpo, "training.use_vllm=true", "training.deepspeed_config=zero3_offload", processes=2)
    assert "training.vllm_mode: 'colocate' with 'zero3_offload', which offloads parameters" in vllm
    assert "use training.deepspeed_config=zero3 (no offload), or vllm_mode=server" in vllm

    # 2 completions per process do not fill a group of 4 on one process; they do across two
    batch = problems(grpo, processes=1)
    assert "training.num_generations: 4 does not divide the generation batch of 2 completions" in batch
    load_recipe(write(tmp_path, grpo), processes=2)
    batch = problems(grpo, "training.gradient_accumulation_steps=3", "training.num_generations=8", processes=2)
    assert ("8 does not divide the generation batch of 12 completions (per_device_train_batch_size 2 x 2 processes "
            "x gradient_accumulation_steps 3)") in batch

    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}))
    mismatch = problems(sft, f"training.deepspeed_config={own}")
    assert "sets train_micro_batch_size_per_gpu 4 but the recipe gives 8 (training.per_device_train_batch_size)" \
        in mismatch
    assert "'zero9' does not exist" in problems(sft, "training.deepspeed_config=zero9")


def test_resuming_across_engines_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = out / "checkpoint-2"
    ckpt.mkdir(parents=True)
    for name in ("trainer_state.json", "scheduler.pt", "latest"):
        (ckpt / name).write_text('{"global_step": 2}')
    assert main(["--recipe", str(write(tmp_path, sft_recipe(out))), "--dry-run", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was saved under DeepSpeed but training.deepspeed_config is null" in err and "Traceback" not in err
