"""DPO, GRPO and GSPO learn: the quickstart recipes, run as shipped through the CLI, on the 2-core CPU.

Each starts from the built-in fai-rl/tiny-sft and is measured on held-out problems it never trains on, from the
artefacts a user gets (metrics.jsonl, summary.json, final/). PPO's proof is in tests/test_ppo.py.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from conftest import ROOT

from fai_rl.cli.train import main

pytestmark = pytest.mark.slow


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_quickstart(name, out, *overrides):
    """Run the shipped recipe; (metrics rows, wall seconds)."""
    recipe = ROOT / "recipes" / "quickstart" / f"{name}.yaml"
    began = time.time()
    assert main(["--recipe", str(recipe), f"training.output_dir={out}", *overrides]) == 0
    return metrics(out), time.time() - began


@pytest.mark.parametrize("algorithm", ["grpo", "gspo"])
def test_grpo_and_gspo_raise_the_held_out_and_the_training_reward(tmp_path, algorithm):
    out = tmp_path / algorithm
    rows, wall = run_quickstart(algorithm, out)
    # eval_reward: mean exact match of 16 sampled answers for each of the 40 held-out problems, before and after.
    # fai-rl/tiny-sft is trained on first use, so its weights (and every run from it) depend on the CPU's float
    # kernels. Measured, seed 42: previous CI machine GRPO 0.32 -> 0.67; a 2-core AVX-512/AMX Xeon GRPO 0.295 -> 0.517
    # (train reward 0.35 -> 0.80), GSPO 0.295 -> 0.664 (0.35 -> 0.85). Asked: +0.15 held out (3x the ~0.05 spread of
    # a 640-sample eval over 40 prompts) and +0.3 on the training reward.
    evals = [(r["step"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    assert [s for s, _ in evals] == [0, 75, 150]
    before, after = evals[0][1], evals[-1][1]
    assert after - before >= 0.15, evals
    train = [r for r in rows if "reward" in r]
    assert all("rewards/exact_match/mean" in r for r in train)  # each reward logs under its own name
    assert train[-1]["reward"] > train[0]["reward"] + 0.3
    # GSPO is the same code path with the paper's defaults filled in by the schema.
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())["training"]
    expected = ("sequence", "grpo", 3e-4, 4e-4) if algorithm == "gspo" else ("token", "dapo", 0.2, 0.2)
    got = ("importance_sampling_level", "loss_type", "epsilon", "epsilon_high")
    assert tuple(resolved[k] for k in got) == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 150 and summary["metrics"]["eval_reward"]["last"] == after
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() > 0
    print(f"\n{algorithm.upper()} quickstart: eval_reward {before:.3f} -> {after:.3f}, train reward "
          f"{train[0]['reward']:.3f} -> {train[-1]['reward']:.3f}, train {summary['train_runtime_s']} s, wall {wall:.0f} s")
    if algorithm == "grpo":  # the README's next step, on this run (the quickstart trains once)
        check_eval_of_the_quickstart(out, after)


def check_eval_of_the_quickstart(out, eval_reward):
    """fai-rl-eval with the shipped recipe: the GRPO model beats its start, fai-rl/tiny-sft, on held-out exact match."""
    from fai_rl.cli.eval import main as evaluate

    began = time.time()
    assert evaluate(["--recipe", str(ROOT / "recipes/eval/quickstart.yaml"), f"evaluation.models=[{out}]",
                     f"evaluation.output_dir={out / 'eval'}"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    sampled, greedy = results["tasks"]["digits-sampled"], results["tasks"]["digits-greedy"]
    grpo, sft = sampled["results"][str(out)]["exact_match"], sampled["results"]["fai-rl/tiny-sft"]["exact_match"]
    assert grpo["pass@1"] >= sft["pass@1"] + 0.12, (grpo, sft)  # the run's own rise was asked >= 0.15
    assert abs(grpo["pass@1"] - eval_reward) < 0.1  # the same measurement as training's eval_reward, resampled
    for stats in (grpo, sft):
        assert stats["pass@16"] >= stats["pass@4"] >= stats["pass@1"]
    assert sampled["delta"][str(out)]["exact_match"]["pass@1"] == pytest.approx(grpo["pass@1"] - sft["pass@1"])
    samples = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (40 * 16 + 40)
    g = greedy["results"][str(out)]["exact_match"]["mean"]
    s = greedy["results"]["fai-rl/tiny-sft"]["exact_match"]["mean"]
    print(f"fai-rl-eval: sampled exact match (pass@1) {sft['pass@1']:.3f} -> {grpo['pass@1']:.3f}, pass@4 "
          f"{sft['pass@4']:.3f} -> {grpo['pass@4']:.3f}, pass@16 {sft['pass@16']:.3f} -> {grpo['pass@16']:.3f}; "
          f"greedy {s:.3f} -> {g:.3f}; eval wall {time.time() - began:.0f} s")


def test_dpo_reaches_0_85_held_out_preference_accuracy_and_the_margin_rises(tmp_path):
    out = tmp_path / "dpo"
    rows, wall = run_quickstart("dpo", out)
    evals = [r for r in rows if "eval_rewards/accuracies" in r]
    assert [r["step"] for r in evals] == [0, 50, 100]
    first, last = evals[0], evals[-1]
    assert first["eval_rewards/margins"] == 0 and first["eval_rewards/accuracies"] == 0  # policy = reference
    # 0.908 / 0.893 / 0.893 of the 131 pairs at step 100 for seeds 42 / 1 / 2 (margins 0.155 / 0.149 / 0.156); the
    # accuracy levels off there (0.885 at step 200, when the recipe ran 200 steps and this test asked for 0.9)
    assert last["eval_rewards/accuracies"] >= 0.85, evals
    assert last["eval_rewards/margins"] > first["eval_rewards/margins"] + 0.1
    assert last["eval_loss"] < first["eval_loss"]
    assert (out / "final" / "model.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nDPO quickstart: held-out accuracy {first['eval_rewards/accuracies']:.3f} -> "
          f"{last['eval_rewards/accuracies']:.3f}, margin {first['eval_rewards/margins']:.3f} -> "
          f"{last['eval_rewards/margins']:.3f}, train {summary['train_runtime_s']} s, wall {wall:.0f} s")
