"""training.drop_zero_variance_groups on the local backend (fai_rl.backends.local.flat_groups), on the tiny models.

The Tinker driver's filter is tested in tests/test_tinker_backend.py (groups_dropped) and tests/test_tinker_rl_metrics.py.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from fai_rl.cli.train import main

FAST = ["training.max_steps=1", "training.per_device_train_batch_size=16", "training.logging_steps=1",
        "data.eval_datasets=[]", "training.bf16=false", "training.log_rollouts_every=0"]


def first_step(out) -> dict:
    return next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in r)


@pytest.mark.parametrize("algorithm,loss_type", [("grpo", "grpo"), ("grpo", "dapo"), ("rloo", None)])
def test_flat_groups_leave_the_update_and_the_loss_averages_over_the_kept_completions(tmp_path, monkeypatch,
                                                                                       algorithm, loss_type):
    # seed 2: 2 of the 4 groups of the first batch are flat (the same samples with and without the filter); beta 0,
    # so flat groups add no gradient, and a mean over the 8 kept completions instead of all 16 doubles the gradient;
    # dapo's token mean scales it by all completion tokens / kept ones (TRL's num_items_in_batch, read on the way)
    import trl

    from fai_rl.backends.local.flat_groups import DropFlatGroups

    tokens = {}
    for cls, key in ((trl.GRPOTrainer, "all"), (DropFlatGroups, "kept")):
        def counted(self, inputs, score=cls._generate_and_score_completions, key=key):
            out = score(self, inputs)
            if "num_items_in_batch" in out:  # RLOO has none
                tokens.setdefault(key, float(out["num_items_in_batch"]))  # the first batch of each run
            return out

        monkeypatch.setattr(cls, "_generate_and_score_completions", counted)
    extra = [f"training.loss_type={loss_type}"] if loss_type else []
    steps = {}
    for drop in (False, True):
        out = tmp_path / f"{algorithm}-{drop}"
        assert main(["--recipe", str(ROOT / f"recipes/quickstart/{algorithm}.yaml"), f"training.output_dir={out}",
                     "training.seed=2", f"training.drop_zero_variance_groups={str(drop).lower()}", *FAST,
                     *extra]) == 0
        steps[drop] = first_step(out)
    kept, dropped = steps[False], steps[True]
    assert "groups_dropped" not in kept and dropped["groups_dropped"] == 4 * dropped["frac_reward_zero_std"] == 2
    assert dropped["reward"] == kept["reward"]  # the same samples
    scale = tokens["all"] / tokens["kept"] if loss_type == "dapo" else 2
    assert scale > 1 and dropped["grad_norm"] == pytest.approx(scale * kept["grad_norm"], rel=1e-4)


def test_a_batch_of_flat_groups_makes_no_optimizer_step(tmp_path):
    # the untrained fai-rl/tiny never answers right: every group is flat (reward 0); with weight decay an optimizer
    # step would still move the weights (it does without the filter)
    from transformers import AutoModelForCausalLM

    from fai_rl.models.load import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny")).state_dict()
    moved = {}
    for drop in (True, False):
        out = tmp_path / str(drop)
        assert main(["--recipe", str(ROOT / "recipes/quickstart/grpo.yaml"), f"training.output_dir={out}",
                     "model.base_model_name=fai-rl/tiny", "training.weight_decay=0.5", "training.learning_rate=1e-2",
                     f"training.drop_zero_variance_groups={str(drop).lower()}", *FAST]) == 0
        final = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
        moved[drop] = max((final[k] - base[k]).abs().max().item() for k in base)
        if drop:
            assert first_step(out)["groups_dropped"] == 4
    assert moved[True] == 0 and moved[False] > 1e-4, moved


def test_a_workflow_step_of_flat_groups_makes_no_update(tmp_path, capsys):
    # workflows group per task and role (fai_rl.workflows.grouping.drop_flat_groups): the untrained fai-rl/tiny never
    # solves nor judges right, so the solver and judge groups of every task are flat and the weights stay as they were
    from transformers import AutoModelForCausalLM

    from fai_rl.models.load import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny")).state_dict()
    out = tmp_path / "solver_judge"
    assert main(["--recipe", str(ROOT / "recipes/quickstart/solver_judge.yaml"), f"training.output_dir={out}",
                 "model.base_model_name=fai-rl/tiny", "training.drop_zero_variance_groups=true", "training.max_steps=1",
                 "training.per_device_train_batch_size=4", "data.eval_datasets=[]"]) == 0
    (row,) = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward/judge" in r]
    tasks = int(capsys.readouterr().out.split("tasks x")[0].rsplit(" ", 2)[-2])
    assert row["reward/solver"] == row["reward/judge"] == 0 and row["groups_dropped"] == 2 * tasks, row
    final = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    assert all(final[k].equal(base[k]) for k in base)
