"""One algorithm, one definition (module: fai_rl/schedule.py): the local and Tinker backends agree on the number of
steps, each step's rows and learning rate, and the names of what they log.

The first tests check fai_rl.schedule against the samplers and schedulers the local backend's trainers use (HF
Trainer through accelerate, TRL's RepeatSampler, transformers' get_scheduler); the Tinker-marked ones run one recipe
on both backends (local CPU, the local Tinker server) and compare metrics.jsonl and summary.json.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from fai_rl.cli.train import main
from fai_rl.config.load import load_recipe
from fai_rl.schedule import Schedule


def _recipe(algorithm: str, *overrides: str):
    return load_recipe(str(ROOT / "recipes" / "quickstart" / f"{algorithm}.yaml"), list(overrides))


# ---- the schedule against the local trainers' own pieces


@pytest.mark.parametrize("rows,per_device,ga,epochs,drop_last", [(10, 4, 1, 2, False), (23, 2, 3, 1.5, False),
                                                                 (10, 4, 1, 2, True), (7, 8, 1, 3, False)])
def test_sft_rows_and_steps_are_hf_trainers(rows, per_device, ga, epochs, drop_last):
    """HF Trainer's data path: a RandomSampler that accelerate makes seedable (data_seed), set_epoch(e) per epoch,
    micro-batches of per_device, GA of them per optimizer step, ceil(epochs x updates per epoch) steps."""
    import math

    import torch
    from accelerate.data_loader import prepare_data_loader

    schedule = Schedule(_recipe("sft", f"training.per_device_train_batch_size={per_device}", "training.max_steps=null",
                                f"training.gradient_accumulation_steps={ga}", f"training.num_train_epochs={epochs}",
                                f"training.dataloader_drop_last={str(drop_last).lower()}", "training.seed=7"), rows)
    loader = torch.utils.data.DataLoader(list(range(rows)), batch_size=per_device, drop_last=drop_last,
                                         sampler=torch.utils.data.RandomSampler(list(range(rows))))
    loader = prepare_data_loader(loader, use_seedable_sampler=True, data_seed=7, put_on_device=False)
    per_epoch = max(1, math.ceil(len(loader) / ga))
    assert schedule.total == math.ceil(epochs * per_epoch)
    seen = []
    for epoch in range(math.ceil(epochs)):
        loader.set_epoch(epoch)
        micro = [b.tolist() for b in loader]
        seen += [sum(micro[k * ga : (k + 1) * ga], []) for k in range(per_epoch)]
    assert [schedule.rows(s) for s in range(schedule.total)] == seen[: schedule.total]


@pytest.mark.parametrize("per_device,ga,generations,iterations", [(8, 1, 4, 1), (4, 2, 4, 2), (6, 1, 3, 3)])
def test_grpo_rounds_and_steps_are_trls(per_device, ga, generations, iterations):
    """TRL's GRPOTrainer: RepeatSampler (one generator for all epochs, whole rounds), steps_per_generation = GA."""
    from trl.trainer.utils import RepeatSampler

    rows, epochs = 13, 2
    schedule = Schedule(_recipe("grpo", f"training.per_device_train_batch_size={per_device}", "training.max_steps=null",
                                f"training.gradient_accumulation_steps={ga}", f"training.num_train_epochs={epochs}",
                                f"training.num_generations={generations}", f"training.num_iterations={iterations}",
                                "training.seed=3"), rows)
    prompts = per_device * ga // generations
    sampler = RepeatSampler(list(range(rows)), mini_repeat_count=generations, batch_size=prompts,
                            repeat_count=iterations * ga, seed=3)
    rounds = []
    for _ in range(epochs):
        stream = list(sampler)[:: generations]  # one entry per prompt copy
        block = prompts * iterations * ga
        rounds += [stream[i : i + prompts] for i in range(0, len(stream), block)]
    micro_steps = len(sampler) // (per_device * ga) * epochs  # dataloader batches of per_device x GA completions
    assert schedule.total == micro_steps // ga == len(rounds) * iterations
    assert [schedule.rows(s) for s in range(0, schedule.total, iterations)] == rounds
    assert all(schedule.round_of(s) == schedule.round_of(s - s % iterations) for s in range(schedule.total))


@pytest.mark.parametrize("kind", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                  "constant_with_warmup", "inverse_sqrt"])
def test_learning_rate_is_transformers_scheduler(kind):
    import torch
    from transformers import get_scheduler

    schedule = Schedule(_recipe("sft", f"training.lr_scheduler_type={kind}", "training.warmup_steps=3",
                                "training.max_steps=12", "training.learning_rate=2e-3"), 100)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2e-3)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=3, num_training_steps=12)
    expected = []
    for _ in range(12):
        expected.append(scheduler.get_last_lr()[0])  # what HF Trainer applies and logs at this step
        optimizer.step()
        scheduler.step()
    assert [schedule.learning_rate(s) for s in range(12)] == pytest.approx(expected, rel=1e-12, abs=0)


def test_a_schedule_transformers_cannot_build_is_a_recipe_error_naming_the_key():
    from fai_rl.errors import RecipeError

    # not offered by the schema (they need arguments no key carries): refused at load on both backends
    for backend in ("local", "tinker"):
        with pytest.raises(RecipeError, match="training.lr_scheduler_type: 'warmup_stable_decay' is not one of"):
            _recipe("sft", "training.lr_scheduler_type=warmup_stable_decay", f"training.backend={backend}")


@pytest.mark.parametrize("algorithm", ["sft", "grpo", "ppo"])
def test_every_epoch_visits_each_row_once_in_a_new_order(algorithm):
    extra = ("training.num_generations=4", "training.per_device_train_batch_size=8") if algorithm == "grpo" else (
        "training.per_device_train_batch_size=4",)
    schedule = Schedule(_recipe(algorithm, "training.max_steps=null", "training.num_train_epochs=3", *extra), 16)
    per_epoch = schedule.total // 3
    epochs = [sum((schedule.rows(s) for s in range(e * per_epoch, (e + 1) * per_epoch)), []) for e in range(3)]
    assert all(sorted(e) == list(range(16)) for e in epochs), epochs
    assert epochs[0] != epochs[1] != epochs[2]


# ---- one recipe on both backends


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train_rows(out):
    return [r for r in _metrics(out) if "learning_rate" in r]


def _both(algorithm: str, tmp_path, server, *overrides: str):
    local, tinker = tmp_path / "local", tmp_path / "tinker"
    recipe = str(ROOT / "recipes" / "quickstart" / f"{algorithm}.yaml")
    assert main(["--recipe", recipe, f"training.output_dir={local}", "training.eval_steps=null",
                 "data.eval_datasets=[]", "training.logging_steps=1", *overrides]) == 0
    assert main(["--recipe", recipe, f"training.output_dir={tinker}", "training.eval_steps=null",
                 "data.eval_datasets=[]", "training.logging_steps=1", "training.backend=tinker",
                 f"tinker.base_url={server.base_url}", "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8",
                 "tinker.download_final=false", *overrides]) == 0
    return local, tinker


def _assert_same_steps_and_rates(local, tinker):
    steps = [json.loads((out / "summary.json").read_text())["global_step"] for out in (local, tinker)]
    assert steps[0] == steps[1], steps
    rates = [{r["step"]: r["learning_rate"] for r in _train_rows(out)} for out in (local, tinker)]
    assert sorted(rates[0]) == sorted(rates[1]) == list(range(1, steps[0] + 1))
    assert [rates[1][s] for s in sorted(rates[1])] == pytest.approx([rates[0][s] for s in sorted(rates[0])],
                                                                    rel=1e-6)


def _keys(out) -> set[str]:
    return set().union(*(_train_rows(out)))


@pytest.fixture
def tinker_env(tinker_server, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    return tinker_server


@pytest.mark.tinker
@pytest.mark.slow
def test_sft_same_steps_rates_names_and_per_epoch_order(tmp_path, tinker_env, monkeypatch):
    seen: list[list[int]] = []
    rows = Schedule.rows
    monkeypatch.setattr(Schedule, "rows", lambda self, step: seen.append(rows(self, step)) or seen[-1])
    # 10 rows, batch 4: 3 steps an epoch (the last one of 2 rows), 6 in 2 epochs (Tinker rounded down to 5 before);
    # a schedule Tinker refused before, with warm-up
    local, tinker = _both("sft", tmp_path, tinker_env, "model.base_model_name=fai-rl/tiny-sft",
                          "data.datasets[0].max_samples=10", "training.per_device_train_batch_size=4",
                          "training.max_steps=null", "training.num_train_epochs=2", "training.warmup_steps=2",
                          "training.lr_scheduler_type=cosine_with_restarts", "rewards=[]")
    _assert_same_steps_and_rates(local, tinker)
    assert json.loads((tinker / "summary.json").read_text())["global_step"] == 6
    assert {"loss", "learning_rate", "epoch", "num_tokens"} <= _keys(local) & _keys(tinker)
    epochs = [[r["epoch"] for r in _train_rows(out)] for out in (local, tinker)]
    assert epochs[1] == pytest.approx(epochs[0])
    first, second = sum(seen[:3], []), sum(seen[3:6], [])
    assert sorted(first) == sorted(second) == list(range(10)) and first != second


@pytest.mark.tinker
@pytest.mark.slow
def test_dpo_same_steps_rates_and_names(tmp_path, tinker_env):
    local, tinker = _both("dpo", tmp_path, tinker_env, "data.datasets[0].max_samples=10",
                          "training.per_device_train_batch_size=4", "training.max_steps=null",
                          "training.num_train_epochs=1", "training.warmup_steps=1", "training.lr_scheduler_type=linear",
                          "training.dpo_loss_type=[sigmoid]")
    _assert_same_steps_and_rates(local, tinker)
    shared = {"loss", "learning_rate", "epoch", "num_tokens", "rewards/accuracies", "rewards/margins",
              "rewards/chosen", "rewards/rejected"}
    assert shared <= _keys(local) & _keys(tinker), (shared - _keys(local), shared - _keys(tinker))


@pytest.mark.tinker
@pytest.mark.slow
def test_grpo_same_steps_rates_and_names(tmp_path, tinker_env):
    # 8 prompts, 2 a round (8 completions / 4), 2 optimizer steps a round (num_iterations, as TRL counts them)
    local, tinker = _both("grpo", tmp_path, tinker_env, "data.datasets[0].max_samples=8",
                          "training.per_device_train_batch_size=8", "training.num_generations=4",
                          "training.num_iterations=2", "training.max_steps=null", "training.num_train_epochs=1",
                          "training.warmup_steps=2", "training.lr_scheduler_type=cosine", "training.beta=0.02",
                          "training.max_completion_length=4")
    _assert_same_steps_and_rates(local, tinker)
    assert json.loads((tinker / "summary.json").read_text())["global_step"] == 8
    shared = {"reward", "reward_std", "rewards/exact_match/mean", "rewards/exact_match/std", "frac_reward_zero_std",
              "completions/mean_length", "completions/max_length", "completions/clipped_ratio", "kl",
              "learning_rate", "num_tokens"}
    assert shared <= _keys(local) & _keys(tinker), (shared - _keys(local), shared - _keys(tinker))


@pytest.mark.tinker
@pytest.mark.slow
def test_ppo_same_steps_rates_and_names(tmp_path, tinker_env):
    # 10 prompts, 4 a step: ceil(10 / 4) = 3 steps (Tinker rounded down to 2 before)
    local, tinker = _both("ppo", tmp_path, tinker_env, "data.datasets[0].max_samples=10",
                          "training.per_device_train_batch_size=4", "training.max_steps=null",
                          "training.num_train_epochs=1", "training.num_ppo_epochs=1", "training.warmup_steps=1",
                          "training.lr_scheduler_type=linear")
    _assert_same_steps_and_rates(local, tinker)
    shared = {"reward", "rewards/exact_match", "kl", "completion_length", "learning_rate", "policy_loss"}
    assert shared <= _keys(local) & _keys(tinker), (shared - _keys(local), shared - _keys(tinker))


def test_tinker_ppo_logs_the_local_ppo_names():
    from fai_rl.backends.tinker.ppo import local_names

    named = local_names({"reward": 0.5, "reward_std": 0.1, "rewards/exact_match/mean": 0.5,
                         "rewards/exact_match/std": 0.2, "completions/mean_length": 3.0, "completions/max_length": 4.0,
                         "loss": -0.1, "kl": 0.01, "learning_rate": 1e-3, "epoch": 0.5})
    assert named == {"reward": 0.5, "rewards/exact_match": 0.5, "completion_length": 3.0, "policy_loss": -0.1,
                     "kl": 0.01, "learning_rate": 1e-3}
