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
    # the same rows through the same weights (LoRA starts at zero): the first step's loss, before any update, is the
    # same mean NLL per loss-carrying token on both backends (torch fp32 vs JAX fp32 on the server)
    losses = [_train_rows(out)[0]["loss"] for out in (local, tinker)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-3), losses


@pytest.mark.tinker
@pytest.mark.slow
def test_dpo_same_steps_rates_and_names(tmp_path, tinker_env):
    local, tinker = _both("dpo", tmp_path, tinker_env, "data.datasets[0].max_samples=10",
                          "training.per_device_train_batch_size=4", "training.max_steps=null",
                          "training.num_train_epochs=1", "training.warmup_steps=1", "training.lr_scheduler_type=linear",
                          "training.dpo_loss_type=[sigmoid]")
    _assert_same_steps_and_rates(local, tinker)
    shared = {"loss", "learning_rate", "epoch", "num_tokens", "rewards/accuracies", "rewards/margins",
              "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"}
    assert shared <= _keys(local) & _keys(tinker), (shared - _keys(local), shared - _keys(tinker))
    # before the first update the policy is the reference on both sides: loss log 2, rewards 0, and the same pair
    # log-probabilities from the same weights
    firsts = [_train_rows(out)[0] for out in (local, tinker)]
    for key in ("loss", "rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert firsts[1][key] == pytest.approx(firsts[0][key], rel=1e-3, abs=1e-4), key


@pytest.mark.tinker
@pytest.mark.slow
def test_grpo_same_steps_rates_and_names(tmp_path, tinker_env):
    # 8 prompts, 2 a round (8 completions / 4), 2 optimizer steps a round (num_iterations, as TRL counts them); every
    # digits prompt is 33 tokens through the chat template, so data.max_length 32 cuts one token off each, on both
    local, tinker = _both("grpo", tmp_path, tinker_env, "data.datasets[0].max_samples=8", "data.max_length=32",
                          "training.per_device_train_batch_size=8", "training.num_generations=4",
                          "training.num_iterations=2", "training.max_steps=null", "training.num_train_epochs=1",
                          "training.warmup_steps=2", "training.lr_scheduler_type=cosine", "training.beta=0.02",
                          "training.max_completion_length=4", "training.log_rollouts_every=4", "wandb.enabled=true",
                          "wandb.mode=offline", "wandb.project=fai-rl-tests")
    _assert_same_steps_and_rates(local, tinker)
    assert json.loads((tinker / "summary.json").read_text())["global_step"] == 8
    shared = {"reward", "reward_std", "rewards/exact_match/mean", "rewards/exact_match/std", "frac_reward_zero_std",
              "completions/mean_length", "completions/max_length", "completions/clipped_ratio", "kl",
              "learning_rate", "num_tokens", "loss", "entropy"}
    assert shared <= _keys(local) & _keys(tinker), (shared - _keys(local), shared - _keys(tinker))
    # the prompts data.max_length cut, counted once per prompt at each round's first step (local: TRL's prompt ids cut
    # by fai_rl.backends.local.prompt_cut, the same ids as the Tinker driver's: tests/test_prompt_cut.py)
    cut = [[(r["step"], r["truncated_prompts"], r["truncated_prompt_tokens"]) for r in _train_rows(out)
            if "truncated_prompts" in r] for out in (local, tinker)]
    assert cut[0] == cut[1] == [(step, 2, 2) for step in (1, 3, 5, 7)], cut
    # what the Tinker driver adds (fai_rl.backends.tinker.rl_metrics): sampler-vs-trainer drift, batch statistics at
    # each round's first step, time per phase. A round's first update sees the weights that sampled it (sampler and
    # trainer are one JAX engine on the local server: drift ~1e-7); its second (num_iterations 2) sees them after one
    # update, so its drift includes that change (measured up to ~0.01 at this learning rate)
    rows = _train_rows(tinker)
    rounds = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rounds] == [1, 3, 5, 7]
    first = [(r["kl_sample_train"], r["kl_sample_train_v2"]) for r in rounds]
    assert all(abs(v1) < 1e-4 and 0 <= v2 < 1e-6 for v1, v2 in first), first
    assert all(abs(r["kl_sample_train"]) < 0.1 and r["time/train"] > 0 and abs(r["loss"]) < 10 for r in rows)
    assert all(r["time/sample"] > 0 and r["tokens/prompt"] > 0 and r["tokens/completion"] > 0 and
               "advantages/std" in r for r in rounds)
    print(f"\ntinker GRPO: kl_sample_train at a round's first update max |{max(abs(v) for v, _ in first):.1e}|, "
          f"after one update max |{max(abs(r['kl_sample_train']) for r in rows):.1e}|; entropy {rows[0]['entropy']:.3f}"
          f" (local {_train_rows(local)[0]['entropy']:.3f})")
    for out in (local, tinker):  # the same transcripts and the same wandb feed on both backends
        names = sorted(p.name for p in (out / "rollouts").iterdir())
        assert names == [f"step-{n}.{ext}" for n in (1, 4, 8) for ext in ("html", "jsonl")], names
        shown = [json.loads(line) for line in (out / "rollouts" / "step-4.jsonl").read_text().splitlines()]
        assert len(shown) == 8 and [r["group"] for r in shown] == [0] * 4 + [1] * 4  # 2 prompts x 4 completions
        assert all(r["completion"] in (out / "rollouts" / "step-4.html").read_text() or "<" in r["completion"]
                   for r in shown)
        _assert_wandb_holds_metrics(out, table_steps=(1, 4, 8))


def _assert_wandb_holds_metrics(out, table_steps=()):
    """Every metrics.jsonl value is in the offline wandb run at its step (rows at one step merge there)."""
    from wandb_records import history

    logged, expected = history(out), {}
    for row in _metrics(out):
        expected.setdefault(row.pop("step"), {}).update(row)
    for step, row in expected.items():
        assert {k: logged[step].get(k) for k in row} == pytest.approx(row, nan_ok=True), step
    assert [s for s in sorted(logged) if "rollouts/_type" in logged[s]] == list(table_steps)


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


# ---- every key one backend cannot honour is refused (ours) or noted (FAI-RL's) on that backend

# A non-default value for every key the table reads on the local backend only: written in a Tinker recipe, each must
# be reported. The first test keeps this list and the table in step (a new local-only row needs a value here).
LOCAL_ONLY_VALUES = {
    "model.torch_dtype": "bfloat16", "model.use_lora": "true", "model.lora_r": "4", "model.lora_alpha": "8",
    "model.lora_dropout": "0.2", "model.lora_target_modules": "[q_proj]", "model.lora_bias": "all",
    "model.lora_exclude_modules": "[lm_head]", "model.load_in_4bit": "true", "model.load_in_8bit": "true",
    "model.bnb_4bit_quant_type": "fp4", "model.bnb_4bit_compute_dtype": "float16",
    "model.bnb_4bit_use_double_quant": "false", "model.attn_implementation": "eager",
    "model.use_flash_attention": "true", "model.low_cpu_mem_usage": "false", "model.ignore_mismatched_sizes": "true",
    "model.value_model_name": "fai-rl/tiny-sft", "data.remove_unused_columns": "true", "training.optim": "adafactor",
    "training.bf16": "true", "training.fp16": "true", "training.gradient_checkpointing": "true",
    "training.deepspeed_config": "zero2", "training.packing": "true", "training.padding_free": "false", "training.use_liger_kernel": "true",
    "training.fast_generation": "true", "training.dataloader_num_workers": "2", "training.dataloader_pin_memory": "true",
    "training.dataloader_drop_last": "true", "training.ddp_find_unused_parameters": "true",
    "training.save_only_model": "true", "training.prediction_loss_only": "true",
    "training.metric_for_best_model": "eval_loss", "training.greater_is_better": "false",
    "training.load_best_model_at_end": "true", "training.precompute_ref_log_probs": "true",
    "training.steps_per_generation": "2", "training.mask_truncated_completions": "true", "training.use_vllm": "true",
    "training.vllm_mode": "server", "training.gamma": "0.9", "training.lam": "0.9", "training.cliprange_value": "0.3",
    "training.vf_coef": "0.5", "s3.upload_checkpoints": "false", "s3.delete_local_after_upload": "true",
}


def _local_only():
    from fai_rl.config.support import KEYS

    return {key: row for key, row in KEYS.items() if "tinker" not in row.backends}


def test_the_sweep_below_covers_every_local_only_key_of_the_table():
    assert sorted(_local_only()) == sorted(LOCAL_ONLY_VALUES)


@pytest.mark.parametrize("key", sorted(LOCAL_ONLY_VALUES))
def test_a_key_tinker_cannot_honour_is_an_error_or_a_fai_rl_note_on_tinker(key):
    from fai_rl.algorithms import spec_of
    from fai_rl.config.load import recipe_notes
    from fai_rl.errors import RecipeError

    row = _local_only()[key]
    algorithm = row.algorithms[0]
    recipe = ROOT / "recipes" / "quickstart" / f"{algorithm if algorithm != 'cpt' else 'sft'}.yaml"
    written = f"{key}={LOCAL_ONLY_VALUES[key]}"
    overrides = ["training.backend=tinker", "model.base_model_name=fai-rl/tiny-sft", written]
    if key.startswith("s3."):
        overrides.insert(0, "s3.enabled=true")
        overrides.insert(0, "s3.bucket=b")
    if not row.fai_rl:  # ours: an error naming the key, the backend and what to do
        with pytest.raises(RecipeError) as info:
            load_recipe(str(recipe), overrides)
        assert any(p.startswith(f"command line: {key}: ") and "tinker" in p.lower() and "remove it" in p
                   for p in info.value.problems), info.value.problems
        return
    loaded = load_recipe(str(recipe), overrides)  # FAI-RL's: accepted, with one line saying it changes nothing
    assert spec_of(loaded.training.algorithm).name == algorithm or algorithm == "cpt"
    assert any(key in n and "the tinker backend does not read it" in n for n in recipe_notes(loaded)), \
        recipe_notes(loaded)


def test_tinker_keys_on_the_local_backend_are_dormant_with_one_note():
    from fai_rl.config.load import recipe_notes

    loaded = load_recipe(str(ROOT / "recipes" / "quickstart" / "grpo.yaml"),
                         ["tinker.rl_loss=ppo", "tinker.lora_rank=4", "tinker.max_retries=7"])
    (note,) = [n for n in recipe_notes(loaded) if n.startswith("tinker.")]
    assert note.startswith("tinker.lora_rank, tinker.max_retries, tinker.rl_loss: read only with training.backend="
                           "tinker"), note
