"""GPU tests (marker `gpu`; CI has no GPU, so they run through the device tool). Results are recorded in docs/."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from fai_rl.cli.launch import count_host_gpus

pytestmark = pytest.mark.gpu


def needs_gpus(n: int):
    return pytest.mark.skipif(count_host_gpus() < n, reason=f"needs {n} GPU(s)")


@needs_gpus(1)
def test_sft_full_lora_qlora_learn_on_one_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_sft_check.py"), "--out", str(tmp_path),
                           "--steps", "30"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["mode"] for r in results if r["ok"]] == ["full", "lora", "qlora"]


def quickstart(out, *extra):
    return run_cli("--recipe", str(ROOT / "recipes/quickstart/sft.yaml"), f"training.output_dir={out}",
                   "training.max_steps=60", "training.eval_steps=30", *extra)


@needs_gpus(2)
def test_num_gpus_2_relaunches_through_accelerate_and_learns(tmp_path):
    proc = quickstart(tmp_path / "ddp", "--num-gpus", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "accelerate.commands.launch --num_processes 2" in proc.stdout
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    ev = summary["metrics"]["eval_loss"]
    assert summary["processes"] == 2 and ev["last"] < 0.5 * ev["first"]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()
    assert not list((tmp_path / "ddp").glob(".final*"))


@needs_gpus(2)
def test_default_on_a_multi_gpu_host_pins_one_device(tmp_path):
    proc = quickstart(tmp_path / "one")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "pinned with CUDA_VISIBLE_DEVICES=0" in proc.stdout
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["processes"] == 1
