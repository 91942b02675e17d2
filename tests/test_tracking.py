"""fai_rl.tracking: the user's WANDB_MODE is respected, and a wandb service that cannot be reached never ends a run
(the run falls back to offline with a one-line note; its metrics end in the offline run dir)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import tiny_recipe
from wandb_records import history

from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.tracking import finish_wandb, start_wandb, wandb_mode


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """An API key that looks real, no netrc, quiet wandb, a short init timeout."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")  # wandb.Settings(init_timeout=3): wandb reads it from the env
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    yield monkeypatch
    import wandb

    wandb.teardown()  # wandb keeps the settings (base URL) of its first setup in the process: later tests get fresh ones


@pytest.mark.parametrize(("recipe_mode", "env", "expected"), [
    ("auto", "offline", "offline"),  # the issue: auto + an API key overrode WANDB_MODE=offline
    ("online", "offline", "offline"),
    ("auto", "disabled", "disabled"),
    ("auto", "dryrun", "offline"),
    ("auto", None, "online"),  # the key
    ("offline", "online", "offline"),
])
def test_wandb_mode_respects_the_users_wandb_mode(wandb_env, write_recipe, tmp_path, recipe_mode, env, expected):
    if env:
        wandb_env.setenv("WANDB_MODE", env)
    recipe = load_recipe(write_recipe(tiny_recipe(tmp_path / "out", wandb={"enabled": True, "mode": recipe_mode})))
    assert wandb_mode(recipe) == expected


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_wandb_falls_back_offline_and_the_run_finishes(wandb_env, write_recipe, tmp_path, capsys):
    wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")  # no server: connection refused
    out = tmp_path / "run"
    recipe = tiny_recipe(out, wandb={"enabled": True, "project": "fai-rl-tests"})
    recipe["training"]["max_steps"] = 4
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("wandb: ") and "cannot be reached" in line]
    assert len(notes) == 1 and "logging offline to" in notes[0] and "wandb sync" in notes[0], printed[-3000:]
    logged = history(out)  # the offline run's own log, as `wandb sync` would upload it
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "eval_loss"} <= {k for row in rows for k in row}
    expected: dict[int, dict] = {}
    for row in rows:  # rows at one step merge in wandb (HF logs train_runtime twice at the last step)
        expected.setdefault(row.pop("step"), {}).update(row)
    for step, row in expected.items():
        assert {k: logged[step][k] for k in row} == pytest.approx(row, nan_ok=True), step


def test_a_server_that_never_answers_falls_back_after_init_timeout(wandb_env, write_recipe, tmp_path, capsys):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        recipe = load_recipe(write_recipe(tiny_recipe(tmp_path / "out", wandb={"enabled": True})))
        run = start_wandb(recipe, tmp_path)
        try:
            assert Path(run.dir).parent.name.startswith("offline-run-")
            run.log({"loss": 1.5}, step=1)
        finally:
            finish_wandb(run)
    assert "cannot be reached (Timed out" in capsys.readouterr().out
    assert history(tmp_path)[1]["loss"] == 1.5
