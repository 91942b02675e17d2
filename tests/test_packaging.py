"""The package builds into a wheel that carries the tiny model's files, the console script and the licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_tiny_model_files_console_script_and_license(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=tree, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("fai_rl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert f"fai_rl/models/tiny/{f}" in names
    assert "fai_rl/cli/train.py" in names and "fai_rl/config/schema.py" in names
    assert "fai-rl-train = fai_rl.cli.train:main" in entry_points
    assert "License-Expression: Apache-2.0" in metadata and any(n.endswith("licenses/LICENSE") for n in names)
    for dep in ("transformers", "trl", "peft", "accelerate", "datasets", "omegaconf", "wandb", "tinker"):
        assert f"Requires-Dist: {dep}" in metadata
