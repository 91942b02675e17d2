"""DPO, GRPO and GSPO end to end through the CLI on the built-in tiny SFT model: the pipeline and its artefacts.

These are short runs that check the wiring (data -> TRL trainer -> held-out metrics before and after -> final/).
The learning proofs of the quickstart recipes are longer runs; PPO's is in tests/test_ppo.py.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from fai_rl.cli.train import main

pytestmark = pytest.mark.slow


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_quickstart(name, out, *overrides):
    recipe = ROOT / "recipes" / "quickstart" / f"{name}.yaml"
    assert main(["--recipe", str(recipe), f"training.output_dir={out}", *overrides]) == 0
    return metrics(out)


@pytest.mark.parametrize("algorithm", ["grpo", "gspo"])
def test_grpo_and_gspo_score_held_out_prompts_before_and_after(tmp_path, algorithm):
    out = tmp_path / algorithm
    rows = run_quickstart(algorithm, out, "training.max_steps=4", "training.per_device_train_batch_size=32",
                          "training.eval_steps=null", "training.logging_steps=2")
    evals = [(r["step"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    assert [s for s, _ in evals] == [0, 4] and all(0 <= v <= 1 for _, v in evals)
    train = [r for r in rows if "reward" in r]
    assert train and all("rewards/exact_match/mean" in r for r in train)  # the reward logs under its own name
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())["training"]
    expected = ("sequence", "grpo", 3e-4) if algorithm == "gspo" else ("token", "dapo", 0.2)
    assert (resolved["importance_sampling_level"], resolved["loss_type"], resolved["epsilon"]) == expected
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None
    assert json.loads((out / "summary.json").read_text())["global_step"] == 4


def test_dpo_measures_held_out_preference_accuracy_before_and_after(tmp_path):
    out = tmp_path / "dpo"
    rows = run_quickstart("dpo", out, "training.max_steps=6", "training.eval_steps=null", "training.logging_steps=2")
    evals = [r for r in rows if "eval_rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [0, 6]
    assert evals[0]["eval_rewards/margins"] == 0  # the policy starts as its reference
    assert evals[-1]["eval_rewards/margins"] != 0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert (out / "final" / "model.safetensors").exists()
