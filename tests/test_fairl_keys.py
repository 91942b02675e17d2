"""FAI-RL's recipe keys reach the library arguments they name on the local backend (common.trainer_arguments,
models/load.py), save_only_model checkpoints resume, wandb.base_url picks the server, PPO's gradient_accumulation_steps
sizes its rollout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from fai_rl.config import load_recipe


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- trainer_arguments: training.* and data.remove_unused_columns -> TrainingArguments


def test_trainer_arguments_carry_fairl_training_keys(write_recipe, tmp_path):
    from trl import SFTConfig

    from fai_rl.backends.local.common import trainer_arguments

    recipe = tiny_recipe(tmp_path / "out")
    recipe["training"].update({
        "dataloader_num_workers": 2, "dataloader_pin_memory": True, "dataloader_drop_last": True,
        "ddp_find_unused_parameters": True, "save_only_model": True, "prediction_loss_only": True, "max_steps": -1,
    })
    recipe["data"]["remove_unused_columns"] = True
    args = SFTConfig(**trainer_arguments(load_recipe(write_recipe(recipe)), has_eval=True))
    assert (args.dataloader_num_workers, args.dataloader_pin_memory, args.dataloader_drop_last) == (2, True, True)
    assert args.ddp_find_unused_parameters is True and args.save_only_model is True
    assert args.prediction_loss_only is True and args.remove_unused_columns is True
    assert args.max_steps == -1 and args.fp16 is False


def test_trainer_arguments_defaults_and_grpo_keeps_its_columns(write_recipe, tmp_path):
    from fai_rl.backends.local.common import trainer_arguments

    args = trainer_arguments(load_recipe(write_recipe(tiny_recipe(tmp_path / "sft"))), has_eval=True)
    # null pin memory: pinned only with a GPU (CPU here); ours stay off unless asked
    assert args["dataloader_pin_memory"] is False and args["ddp_find_unused_parameters"] is False
    assert args["remove_unused_columns"] is False and args["save_only_model"] is False

    grpo = tiny_recipe(tmp_path / "grpo")
    grpo["training"].update({"algorithm": "grpo", "num_generations": 4, "per_device_train_batch_size": 4})
    grpo["data"]["remove_unused_columns"] = True
    grpo["data"].pop("loss_on")
    grpo["rewards"] = [{"function": "exact_match"}]
    args = trainer_arguments(load_recipe(write_recipe(grpo, "grpo.yaml")), has_eval=True)
    assert args["remove_unused_columns"] is False  # the reward functions read `answer`


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 on a GPU is valid")
def test_fp16_without_a_gpu_is_refused_and_bf16_runs_in_float32_with_a_note(write_recipe, tmp_path, capsys):
    from fai_rl.cli.train import main

    recipe = tiny_recipe(tmp_path / "out")
    recipe["training"].update({"fp16": True, "bf16": None})
    assert main(["--recipe", str(write_recipe(recipe)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "training.fp16: true, but this machine has no CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    # FAI-RL's template writes bf16: true: on this CPU it trains in float32, said once
    recipe["training"].update({"fp16": False, "bf16": True})
    assert main(["--recipe", str(write_recipe(recipe)), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("note: training.bf16: true, but no GPU here runs bf16") == 1
    from fai_rl.backends.local.common import trainer_arguments

    assert trainer_arguments(load_recipe(write_recipe(recipe)), has_eval=False)["bf16"] is False


# ---- models/load.py: model.* -> from_pretrained / LoraConfig / BitsAndBytesConfig


def _model(write_recipe, tmp_path, **model):
    recipe = tiny_recipe(tmp_path / "out")
    recipe["model"].update(model)
    return load_recipe(write_recipe(recipe)).model


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU flash-attention 2 may be chosen")
def test_use_flash_attention_without_flash_attn_loads_sdpa_with_one_note(write_recipe, tmp_path, capsys):
    from fai_rl.models import load

    load._note_once.cache_clear()
    m = _model(write_recipe, tmp_path, use_flash_attention=True)
    first, second = load.load_causal_lm(m), load.load_causal_lm(m)  # e.g. PPO's policy and its reference
    assert first.config._attn_implementation == "sdpa" == second.config._attn_implementation
    notes = [line for line in capsys.readouterr().out.splitlines() if "flash-attention 2" in line]
    assert len(notes) == 1 and "using SDPA" in notes[0], notes


def test_from_pretrained_gets_low_cpu_mem_usage_and_ignore_mismatched_sizes(write_recipe, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from fai_rl.models.load import load_causal_lm

    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        return original(path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model = load_causal_lm(_model(write_recipe, tmp_path, low_cpu_mem_usage=False, ignore_mismatched_sizes=True))
    assert seen["low_cpu_mem_usage"] is False and seen["ignore_mismatched_sizes"] is True
    assert model.num_parameters() > 0  # transformers 5 accepts both (and loads without a second copy regardless)


@pytest.mark.parametrize("exclude", [["q_proj"], r".*\.0\.self_attn\.q_proj"])
def test_lora_bias_and_exclude_modules_reach_the_peft_model(write_recipe, tmp_path, exclude):
    from peft import get_peft_model

    from fai_rl.models.load import load_causal_lm, lora_config

    m = _model(write_recipe, tmp_path, use_lora=True, lora_bias="lora_only", lora_exclude_modules=exclude)
    peft_model = get_peft_model(load_causal_lm(m), lora_config(m))
    config = peft_model.peft_config["default"]
    assert config.bias == "lora_only"
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    q_proj = {name for name in adapted if name.endswith("q_proj")}
    if isinstance(exclude, list):
        assert not q_proj and any(name.endswith("k_proj") for name in adapted)
    else:  # a regex over the full path: layer 0's q_proj only
        assert q_proj and not any(".layers.0.self_attn.q_proj" in name for name in q_proj)


def test_qlora_compute_dtype_and_double_quant_reach_bitsandbytes(write_recipe, tmp_path):
    from fai_rl.models.load import quantization_config

    m = _model(write_recipe, tmp_path, use_lora=True, load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16",
               bnb_4bit_use_double_quant=False, torch_dtype="float32")
    q = quantization_config(m)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_use_double_quant is False
    m = _model(write_recipe, tmp_path, use_lora=True, load_in_4bit=True, torch_dtype="float32")
    assert quantization_config(m).bnb_4bit_compute_dtype == torch.float32  # null: the weights' dtype


# ---- training.save_only_model, then --resume


def test_resume_from_a_save_only_model_checkpoint_continues_with_a_fresh_optimizer(write_recipe, tmp_path, capsys):
    from fai_rl.cli.train import main

    out = tmp_path / "weights-only"
    recipe = tiny_recipe(out)
    recipe["data"].pop("eval_datasets")
    recipe["training"].update({"max_steps": 6, "save_steps": 2, "logging_steps": 1, "save_only_model": True,
                               "lr_scheduler_type": "linear"})
    path = write_recipe(recipe)
    assert main(["--recipe", str(path)]) == 0
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").exists() and not (checkpoint / "optimizer.pt").exists()
    straight = {row["step"]: row["learning_rate"] for row in metrics(out) if "learning_rate" in row}
    capsys.readouterr()

    assert main(["--recipe", str(path), "--resume", str(checkpoint)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--resume:")]
    assert len(said) == 1 and "save_only_model: true" in said[0] and "fresh optimizer" in said[0], said
    assert "continued at step 2" in said[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 6
    resumed = {row["step"]: row["learning_rate"] for row in metrics(out) if "learning_rate" in row}
    assert sorted(resumed) == list(range(1, 7))  # steps 3..6 run again, once each
    for step in range(3, 7):  # the schedule went on from step 2, not back to its start
        assert resumed[step] == pytest.approx(straight[step]), (step, resumed, straight)
    assert (out / "final" / "model.safetensors").exists()


# ---- wandb.base_url


def test_wandb_base_url_becomes_wandb_base_url_unless_the_environment_has_one(write_recipe, tmp_path, monkeypatch):
    from fai_rl.tracking import finish_wandb, start_wandb

    monkeypatch.setenv("WANDB_BASE_URL", "placeholder")  # so that monkeypatch restores the variable afterwards
    monkeypatch.delenv("WANDB_BASE_URL")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    url = "http://wandb.example.test:8080"
    recipe = tiny_recipe(tmp_path / "out")
    recipe["wandb"] = {"enabled": True, "project": "fai-rl-tests", "mode": "offline", "base_url": url}
    r = load_recipe(write_recipe(recipe))
    run = start_wandb(r, tmp_path)
    try:
        assert os.environ["WANDB_BASE_URL"] == url and run.settings.base_url == url
    finally:
        finish_wandb(run)

    monkeypatch.setenv("WANDB_BASE_URL", "http://mine.example.test")
    run = start_wandb(r, tmp_path)
    try:
        assert os.environ["WANDB_BASE_URL"] == "http://mine.example.test"
    finally:
        finish_wandb(run)


# ---- PPO: gradient_accumulation_steps sizes the rollout (TRL's PPO meaning)


def test_ppo_rollout_is_per_device_times_gradient_accumulation(write_recipe, tmp_path, monkeypatch, one_thread,
                                                              capsys, recwarn):
    from fai_rl.backends.local import ppo
    from fai_rl.cli.train import main

    rollouts, forwards = [], []
    rollout, forward = ppo.PPORun.rollout, ppo.PolicyAndCritic.forward

    def count_rollout(self, rows):
        rollouts.append(len(rows))
        return rollout(self, rows)

    def count_forward(self, input_ids_bs, attention_mask_bs, n_completion):
        forwards.append((torch.is_grad_enabled(), len(input_ids_bs)))
        return forward(self, input_ids_bs, attention_mask_bs, n_completion)

    monkeypatch.setattr(ppo.PPORun, "rollout", count_rollout)
    monkeypatch.setattr(ppo.PolicyAndCritic, "forward", count_forward)
    out = tmp_path / "ppo"
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": [{"name": "fai-rl/arithmetic", "split": "train", "max_samples": 64}],
                 "max_length": 34},  # the 38 prompts of 35 tokens lose their first: counted, said once
        "training": {
            "algorithm": "ppo", "output_dir": str(out), "learning_rate": 1e-3, "max_steps": 2,
            "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "num_mini_batches": 1,
            "num_ppo_epochs": 1, "max_completion_length": 4, "logging_steps": 1, "save_steps": 100, "bf16": False,
        },
        "rewards": [{"function": "exact_match"}],
    }
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    assert rollouts == [6, 6]  # per_device 2 x gradient_accumulation_steps 3 prompts a step
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0]) == {
        "step": 0, "truncated_prompts": 38.0, "truncated_prompt_tokens": 38.0}
    printed = capsys.readouterr()
    assert "note: 38 of 64 PPO prompts (train and eval; cut each time they are sampled) longer than " \
           "data.max_length=34 tokens were cut from the left (38 tokens dropped" in printed.out
    assert not [w for w in recwarn if "longer than data.max_length" in str(w.message)]  # no per-batch warning
    # each step: the rollout's forward passes and the one mini-batch's accumulation, both in micro-batches of 2
    assert forwards == [(False, 2)] * 3 + [(True, 2)] * 3 + [(False, 2)] * 3 + [(True, 2)] * 3, forwards
    assert json.loads((out / "summary.json").read_text())["global_step"] == 2
    rows = [row for row in metrics(out) if "policy_loss" in row]
    assert [row["step"] for row in rows] == [1, 2] and all(row["policy_loss"] == row["policy_loss"] for row in rows)


@pytest.mark.tinker
@pytest.mark.slow
def test_tinker_ppo_rollout_is_per_device_times_gradient_accumulation(tmp_path, tinker_server, monkeypatch):
    from conftest import ROOT

    from fai_rl.backends.tinker import rollouts
    from fai_rl.cli.train import main

    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    sizes, sample = [], rollouts.sample

    def count_sample(session, sampler, rows, *args, **kwargs):
        sizes.append(len(rows))
        return sample(session, sampler, rows, *args, **kwargs)

    monkeypatch.setattr(rollouts, "sample", count_sample)
    out = tmp_path / "tinker-ppo"
    assert main(["--recipe", str(ROOT / "recipes" / "quickstart" / "ppo.yaml"), "training.backend=tinker",
                 f"tinker.base_url={tinker_server.base_url}", "model.base_model_name=fai-rl/tiny-sft",
                 "tinker.lora_rank=8", f"training.output_dir={out}", "training.max_steps=2",
                 "training.eval_steps=null", "training.logging_steps=1", "tinker.download_final=false",
                 "data.eval_datasets=[]", "training.per_device_train_batch_size=4",
                 "training.gradient_accumulation_steps=2", "training.num_mini_batches=2"]) == 0
    assert sizes == [8, 8]  # per_device 4 x gradient_accumulation_steps 2 prompts a step
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
