"""Every shipped recipe loads and validates; the offline ones also pass --dry-run (data, template, launch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from fai_rl.algorithms import spec_of
from fai_rl.backends import check_dispatch
from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.rewards import check_rewards

EVAL_RECIPES = sorted((ROOT / "recipes" / "eval").glob("*.yaml"))  # fai-rl-eval recipes, a schema of their own
PIPELINES = sorted((ROOT / "recipes" / "pipelines").glob("*.yaml"))  # stages of training recipes (test_pipeline)
RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set(EVAL_RECIPES) - set(PIPELINES))


def test_there_are_recipes_for_the_quickstart_and_real_models():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    assert "quickstart/sft.yaml" in names
    assert {f"sft/{m}_{v}.yaml" for m in ("qwen3_0.6b", "llama3.2_1b") for v in ("full", "lora", "qlora")} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_validates(path: Path):
    recipe = load_recipe(path, extra_rules=[check_dispatch, check_rewards])
    assert recipe.training.output_dir and recipe.data.datasets


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "quickstart").glob("*.yaml")), ids=lambda p: p.name)
def test_quickstart_recipe_dry_runs_offline(path: Path, tmp_path, capsys):
    assert main(["--recipe", str(path), "--dry-run", f"training.output_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "recipe OK" in out and "dry run: nothing trained." in out
    algorithm = load_recipe(path).training.algorithm
    shown = {"sft": "[[", "dpo": "--- pair 1", "grpo": "--- prompt 1", "gspo": "--- prompt 1", "rloo": "--- prompt 1",
             "ppo": "prompt"}
    assert shown[algorithm] in out  # the examples as the algorithm will see them
    if spec_of(algorithm).samples:
        assert "exact_match" in out  # the rewards scored on a few rows
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_recipe_validates_every_stage(path: Path):
    from fai_rl.cli.pipeline import _checkable
    from fai_rl.config.load_pipeline import load_pipeline

    _, stages = load_pipeline(path)
    for stage in (s for s in stages if s.kind == "train"):  # as the pipeline checks it before the first stage
        recipe = load_recipe(stage.recipe, _checkable(stage, stages), extra_rules=[check_dispatch, check_rewards])
        assert recipe.training.output_dir == str(stage.output_dir)


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=lambda p: p.name)
def test_eval_recipe_validates(path: Path):
    from fai_rl.config.load import load_eval_recipe
    from fai_rl.evaluation.tasks import check_eval_rewards

    recipe = load_eval_recipe(path, extra_rules=[check_eval_rewards])
    assert recipe.evaluation.models and recipe.evaluation.tasks


# FAI-RL's README, verbatim: its commands name recipes/training/<algo>/llama3_3B_lora.yaml and these overrides.
FAI_RL_README_COMMANDS = [
    ("sft", 1, []),
    ("dpo", 8, []),
    ("sft", 4, ["training.learning_rate=5e-5", "training.num_train_epochs=3"]),
    ("sft", 4, ["model.base_model_name=Qwen/Qwen3-4B-Instruct-2507", "training.num_train_epochs=3",
                "training.learning_rate=5.0e-5"]),
    ("dpo", 8, ["data.datasets[0].name=your-org/your-dataset", "training.output_dir=models/my_custom_model"]),
]


@pytest.mark.parametrize(("algorithm", "gpus", "overrides"), FAI_RL_README_COMMANDS)
def test_fai_rl_readme_commands_resolve(algorithm, gpus, overrides):
    recipe = load_recipe(ROOT / "recipes" / "training" / algorithm / "llama3_3B_lora.yaml", overrides,
                         extra_rules=[check_dispatch, check_rewards], processes=gpus)
    for item in overrides:
        key, value = item.split("=", 1)
        if key == "data.datasets[0].name":
            assert recipe.data.datasets[0].name == value
        elif key == "training.output_dir":
            assert recipe.training.output_dir == value


def test_every_algorithm_has_a_fai_rl_layout_recipe():
    from fai_rl.config.schema import ALGORITHMS

    for algorithm in ALGORITHMS:
        recipe = load_recipe(ROOT / "recipes" / "training" / algorithm / "llama3_3B_lora.yaml")
        assert recipe.training.algorithm == algorithm and recipe.model.use_lora
