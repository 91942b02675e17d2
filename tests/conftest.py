"""Shared fixtures: recipes written into tmp dirs, the CLI run in-process or as a real subprocess.

Tests never reach a hub: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set for the whole session. The built-in tiny model
is materialised once into the fai-rl cache (FAI_RL_HOME) and shared by every test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread beats two fighting over 2 cores
os.environ.pop("WANDB_API_KEY", None)


def tiny_recipe(output_dir: Path, **sections) -> dict:
    """A small SFT recipe on the built-in model and task; `sections` deep-update it."""
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {
            "datasets": [{"name": "fai-rl/arithmetic", "split": "train", "max_samples": 256}],
            "eval_datasets": [{"name": "fai-rl/arithmetic", "split": "test", "max_samples": 64}],
            "max_length": 64,
            "loss_on": "completion",
        },
        "training": {
            "algorithm": "sft",
            "output_dir": str(output_dir),
            "learning_rate": 3e-3,
            "max_steps": 8,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "logging_steps": 2,
            "save_steps": 4,
            "bf16": False,
        },
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return recipe


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe(dict or text, name) -> path of a recipe file in tmp_path."""

    def write(content, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def run_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """fai-rl-train as a real subprocess (what a user runs), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "fai_rl.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def kill_after_checkpoint(recipe_path: Path, checkpoint: Path, timeout: float = 240) -> None:
    """Start `fai-rl-train --recipe recipe_path`, SIGKILL it (a lost node) once `checkpoint` is complete."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(recipe_path)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + timeout
        while not (checkpoint / "trainer_state.json").exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline, f"no {checkpoint.name} within {timeout} s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def tinker_server():
    """A real Tinker-API server on loopback serving `fai-rl/tiny-sft` (tests marked `tinker`).

    skyrl-tx (JAX on CPU) behind our wire adapter for the tinker SDK, from its own venv (tests/tinker_harness/).
    One per pytest worker, started on first use (~15 s), stopped when the session ends. See
    tests/tinker_harness/server.py: `.base_url`, `.api_key`, `.base_model` (pass it to create_lora_training_client),
    `.model_dir`, `.service_client()`, `.rest_client()`, `.server_log`, `.adapter_log`. Tests that kill a server
    start their own `TinkerServer()` (a context manager) instead of killing this shared one.
    """
    from tinker_harness.server import ServerNotInstalled, TinkerServer

    os.environ.setdefault("TINKER_TELEMETRY", "0")
    try:
        server, missing = TinkerServer("fai-rl/tiny-sft"), None
    except ServerNotInstalled as e:
        server, missing = None, str(e)
    if missing:
        pytest.fail(missing, pytrace=False)
    with server:
        yield server


@pytest.fixture
def tinker_env(tinker_server, monkeypatch):
    """The local server for a `fai-rl-train` run: its API key in the environment, no TINKER_BASE_URL; returns it."""
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    return tinker_server



def copies_at_states(mp: pytest.MonkeyPatch, out: Path) -> dict[int, Path]:
    """step -> a copy of the Tinker run dir `out` made right after its state at that step was saved (TinkerSession's
    save_state, wrapped through `mp`): what a kill at that moment leaves, tinker_rounds/ included, which the finished
    run deletes. Resume an earlier state exactly from its copy, not from the finished run's dir."""
    import shutil

    from fai_rl.backends.tinker.common import TinkerSession

    copies: dict[int, Path] = {}
    save_state = TinkerSession.save_state

    def save_and_copy(session, step):
        path = save_state(session, step)
        copies[step] = out.parent / f"{out.name}-killed-after-{step}"
        shutil.rmtree(copies[step], ignore_errors=True)
        shutil.copytree(out, copies[step])
        return path

    mp.setattr(TinkerSession, "save_state", save_and_copy)
    return copies
