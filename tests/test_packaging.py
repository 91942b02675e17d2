"""The package builds into a wheel that carries everything a recipe may name (the tiny model's files, the DeepSpeed
configs), the console scripts and the licence; installed into a fresh venv, it runs from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (pyproject, README, LICENSE, src): what `pip wheel .` ships."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), "."],
        cwd=tree, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = tmp.glob("fai_rl-*.whl")
    return built


def test_wheel_ships_tiny_model_files_deepspeed_configs_console_script_and_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert f"fai_rl/models/tiny/{f}" in names
    for name in ("zero1", "zero2", "zero3", "zero3_offload"):
        assert f"fai_rl/config/deepspeed_configs/{name}.json" in names
    assert "fai_rl/cli/train.py" in names and "fai_rl/config/schema.py" in names
    assert "fai-rl-train = fai_rl.cli.train:main" in entry_points
    assert "License-Expression: Apache-2.0" in metadata and any(n.endswith("licenses/LICENSE") for n in names)
    for dep in ("transformers", "trl", "peft", "accelerate", "datasets", "omegaconf", "wandb", "tinker"):
        assert f"Requires-Dist: {dep}" in metadata


def test_installed_wheel_runs_a_recipe_naming_shipped_configs_from_another_directory(wheel, tmp_path):
    """`pip install fai-rl`, then a recipe naming a shipped DeepSpeed config, the built-in model and the built-in task,
    from a directory that is not the repository. The dependencies come from this venv (no network): a .pth line adds
    its site-packages to the new venv's path without running that dir's own .pth files (this repo's editable install)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": [{"name": "fai-rl/arithmetic", "split": "train", "max_samples": 32}], "max_length": 64},
        "training": {"algorithm": "sft", "output_dir": "run", "max_steps": 2, "per_device_train_batch_size": 4,
                     "bf16": False, "deepspeed_config": "zero1"},
    }
    (elsewhere / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([venv / "bin" / "fai-rl-train", "--recipe", "recipe.yaml", "--dry-run", "--num-gpus", "2"],
                          cwd=elsewhere, capture_output=True, text=True, env={**env, "CUDA_VISIBLE_DEVICES": ""},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "dry run: nothing trained." in proc.stdout
    shipped = Path(site).resolve() / "fai_rl" / "config" / "deepspeed_configs" / "zero1.json"
    assert f"--use_deepspeed --deepspeed_config_file {shipped}" in proc.stdout  # the wheel's copy, not the repo's
    assert not (elsewhere / "run").exists()
