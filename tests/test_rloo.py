"""RLOO (REINFORCE leave-one-out, Ahmadian et al., 2024), added through the registry alone: its advantage maths on
hand-made rewards, its recipe and the keys it refuses, and that it learns on the CPU (and on a local Tinker server).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT

from fai_rl.backends import check_dispatch
from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.errors import RecipeError
from fai_rl.rl_math import leave_one_out_advantages

RECIPE = ROOT / "recipes" / "quickstart" / "rloo.yaml"


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_leave_one_out_advantage_is_the_reward_minus_the_mean_of_the_others():
    # group 1: [1, 0, 0, 1] -> 1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3; group 2: [3, 1, 2, 2] -> 3 - 5/3, 1 - 7/3, 0, 0
    rewards_n = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0.0, 0.0])
    got = leave_one_out_advantages(rewards_n, 4)
    assert torch.allclose(got, expected)
    # = G / (G - 1) x (reward - group mean); a group of equal rewards teaches nothing
    centred = rewards_n.view(2, 4) - rewards_n.view(2, 4).mean(dim=1, keepdim=True)
    assert torch.allclose(got, (4 / 3 * centred).reshape(-1))
    assert leave_one_out_advantages(torch.tensor([0.5, 0.5]), 2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        leave_one_out_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)


@pytest.mark.parametrize("backend", ["local", "tinker"])
def test_the_quickstart_recipe_loads_with_rloo_defaults_and_a_trainer(backend):
    recipe = load_recipe(RECIPE, [f"training.backend={backend}"], extra_rules=[check_dispatch])
    t = recipe.training
    assert (t.algorithm, t.beta, t.epsilon, t.loss_type, t.importance_sampling_level) == ("rloo", 0.0, 0.2, None, None)


@pytest.mark.parametrize("override", ["training.loss_type=dapo", "training.scale_rewards=batch"])
def test_a_grpo_only_key_is_an_error_naming_it(override):
    with pytest.raises(RecipeError) as info:
        load_recipe(RECIPE, [override], extra_rules=[check_dispatch])
    key = override.split("=")[0]
    assert any(p.startswith(f"command line: {key}: training.algorithm rloo does not read it") and "remove it" in p
               for p in info.value.problems), info.value.problems


@pytest.mark.slow
def test_rloo_raises_the_train_reward_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "rloo"
    assert main(["--recipe", str(RECIPE), f"training.output_dir={out}", "training.max_steps=36",
                 "training.logging_steps=1", "training.eval_steps=null", "training.learning_rate=3e-4",
                 "data.eval_datasets=[]"]) == 0
    assert "leave-one-out advantages" in capsys.readouterr().out  # TRL's RLOOTrainer ran, not GRPO's
    train = [r["reward"] for r in metrics(out) if "reward" in r]
    assert len(train) == 36
    first, last = sum(train[:5]) / 5, sum(train[-5:]) / 5
    print(f"\nRLOO local: train reward {first:.3f} -> {last:.3f}")
    assert last - first >= 0.15, train
    # transcripts from RLOOTrainer's batch record too (default every 10 steps, and step 1)
    assert sorted(p.name for p in (out / "rollouts").glob("*.jsonl")) == [f"step-{n}.jsonl" for n in (1, 10, 20, 30)]
    shown = [json.loads(line) for line in (out / "rollouts" / "step-30.jsonl").read_text().splitlines()]
    assert shown and {"prompt", "completion", "reward", "advantage", "rewards"} <= set(shown[0])


@pytest.mark.tinker
@pytest.mark.slow
def test_rloo_raises_the_reward_on_tinker(tmp_path, tinker_server, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    out = tmp_path / "rloo-tinker"
    assert main(["--recipe", str(RECIPE), "training.backend=tinker", f"tinker.base_url={tinker_server.base_url}",
                 "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8", f"training.output_dir={out}",
                 "training.max_steps=8", "training.eval_steps=null", "training.logging_steps=1",
                 "training.learning_rate=2e-3", "training.per_device_train_batch_size=64",
                 "training.num_generations_eval=8", "training.per_device_eval_batch_size=128",
                 "tinker.download_final=false", "data.datasets[0].max_samples=16",
                 "data.eval_datasets[0].split=train", "data.eval_datasets[0].max_samples=16"]) == 0
    rows = metrics(out)
    evals = [r["eval_reward"] for r in rows if "eval_reward" in r]
    train = [r["reward"] for r in rows if "reward" in r]
    first, last = sum(train[:3]) / 3, sum(train[-3:]) / 3
    print(f"\nRLOO tinker: train reward {first:.3f} -> {last:.3f}, eval_reward {evals[0]:.3f} -> {evals[-1]:.3f}")
    assert evals[-1] > evals[0] + 0.15 and last > first, (train, evals)
