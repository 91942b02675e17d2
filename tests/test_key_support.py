"""The key-support table: every key is honoured or declared; FAI-RL's recipe keys load with FAI-RL's meaning."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from fairl_format import fairl_recipe

from fai_rl.config import load_recipe, recipe_to_dict, recipe_to_yaml
from fai_rl.config.load import recipe_notes
from fai_rl.config.schema import Recipe
from fai_rl.config.support import KEYS, support_of
from fai_rl.errors import RecipeError

SFT_DATA = """
- name: "fai-rl/arithmetic"
  split: "train"
  dataset_columns: ["prompt", "answer"]
"""
SFT_TEMPLATE = '  system_prompt: |\n    Q: {prompt}\n    A: {{"answer": "{answer}"}}\n'
RL_DATA = """
- name: "fai-rl/digits"
  split: "train"
  prompt_column: "prompt"
  answer_column: "answer"
"""


def _schema_keys(cls, prefix="") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}.{f.name}" if prefix else f.name, hints[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint):
            keys += _schema_keys(hint, key)
        elif inner is not None and dataclasses.is_dataclass(inner) and f.name != "rewards":
            keys += [key, *_schema_keys(inner, f"{key}[]")]
        else:
            keys.append(key)
    return keys


def test_every_schema_key_has_a_row_and_every_row_a_key():
    keys = [k for k in _schema_keys(Recipe) if not k.startswith("data.eval_datasets[]")]
    assert [k for k in keys if support_of(k) is None] == []
    assert sorted(set(KEYS) - set(keys)) == []


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value.problems


@pytest.mark.parametrize(("algorithm", "key", "read_by"), [
    ("sft", "training.kl_coef=0.1", "read by ppo"),
    ("dpo", "training.packing=true", "read by sft on the local backend"),
    ("sft", "training.num_mini_batches=2", "read by ppo"),
    ("grpo", "training.precompute_ref_log_probs=true", "read by dpo on the local backend"),
])
def test_an_unread_key_of_ours_is_an_error_naming_key_line_and_reader(write_recipe, tmp_path, algorithm, key, read_by):
    text = fairl_recipe(algorithm, tmp_path / "run", RL_DATA if algorithm != "sft" else SFT_DATA,
                        data_extra=SFT_TEMPLATE if algorithm == "sft" else "")
    found = problems(write_recipe(text), [key])
    dotted = key.split("=")[0]
    assert any(p.startswith(f"command line: {dotted}: ") and read_by in p and "remove it" in p for p in found), found


def test_an_unread_key_of_ours_on_tinker_is_an_error_too(write_recipe, tmp_path):
    text = fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=SFT_TEMPLATE)
    found = problems(write_recipe(text), ["training.backend=tinker", "training.optim=adafactor"])
    assert any(p.startswith("command line: training.optim: the tinker backend does not read it") for p in found)


def test_the_tinker_section_is_dormant_on_the_local_backend_with_one_note(write_recipe, tmp_path):
    text = fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=SFT_TEMPLATE)
    recipe = load_recipe(write_recipe(text), ["tinker.lora_rank=8", "tinker.max_retries=5"])
    (note,) = [n for n in recipe_notes(recipe) if n.startswith("tinker.")]
    assert note.startswith("tinker.lora_rank, tinker.max_retries: read only with training.backend=tinker"), note
    # on tinker the same keys are read: no note
    recipe = load_recipe(write_recipe(text), ["tinker.lora_rank=8", "training.backend=tinker"])
    assert not [n for n in recipe_notes(recipe) if n.startswith("tinker.")]


def test_system_prompt_beside_fai_rl_prompt_templates_is_a_note(write_recipe, tmp_path):
    # FAI-RL's GRPO without rewards: its prompt templates carry their own system message; data.system_prompt is inert
    text = fairl_recipe("grpo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft",
                        data_extra='  system_prompt: "Be brief."\n')
    notes = recipe_notes(load_recipe(write_recipe(text)))
    assert any(n.startswith("data.system_prompt: every data.datasets[] has a prompt_template") for n in notes), notes
    text = text.replace("# Weights & Biases", "rewards:\n  - function: exact_match\n# Weights & Biases")
    notes = recipe_notes(load_recipe(write_recipe(text)))  # own rewards, no template: the system prompt is read
    assert not any(n.startswith("data.system_prompt") for n in notes), notes


def test_an_unread_fai_rl_key_is_a_one_line_note_and_loads(write_recipe, tmp_path):
    text = fairl_recipe("grpo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft")
    recipe = load_recipe(write_recipe(text))
    notes = recipe_notes(recipe)
    assert any(n.startswith("training.prediction_loss_only") and "training.algorithm grpo does not read it" in n
               for n in notes), notes
    assert all("\n" not in n for n in notes)


def test_fai_rl_vlm_keys_are_accepted_with_a_note(write_recipe, tmp_path):
    text = fairl_recipe("sft", tmp_path / "run", SFT_DATA + '  image_columns: ["image"]\n',
                        data_extra=SFT_TEMPLATE + "  image_fetch_timeout: 10\n",
                        model_extra="  freeze_vision_tower: true\n")
    notes = recipe_notes(load_recipe(write_recipe(text)))
    for key in ("model.freeze_vision_tower", "data.datasets[0].image_columns", "data.image_fetch_timeout"):
        assert any(n.startswith(key) and "sft_vlm" in n for n in notes), (key, notes)
    (p,) = problems(write_recipe(text), ["training.algorithm=sft_vlm"])
    assert "'sft_vlm' (FAI-RL's multimodal SFT" in p and "not offered by fai-rl" in p


def test_a_typo_is_still_an_error_with_a_did_you_mean(write_recipe, tmp_path):
    text = fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=SFT_TEMPLATE).replace(
        "dataloader_drop_last:", "dataloader_drop_lst:")
    (p,) = problems(write_recipe(text))
    assert "training.dataloader_drop_lst: unknown key; did you mean training.dataloader_drop_last?" in p


def test_fai_rl_meanings_are_filled_in_and_noted(write_recipe, tmp_path):
    text = fairl_recipe("grpo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft",
                        training_extra='  deepspeed_config: "configs/deepspeed/zero1_config.json"\n')
    recipe = load_recipe(write_recipe(text))
    t = recipe.training
    assert t.max_steps is None  # -1: train for num_train_epochs
    assert t.eval_steps is None  # no evaluation data
    assert t.max_completion_length == 2048 - 1024  # FAI-RL's GRPO: max_length - max_prompt_length
    assert t.deepspeed_config == "zero1"
    assert [r.function for r in recipe.rewards] == ["fairl_answer_match", "fairl_xml_format", "fairl_answer_digit"]
    assert recipe.data.datasets[0].prompt_template == "gsm8k"
    notes = "\n".join(recipe_notes(recipe))
    for said in ("no evaluation runs", "zero1_config.json", "max_length 2048 - data.max_prompt_length 1024",
                 "FAI-RL's grpo defaults apply"):
        assert said in notes, notes
    resolved = recipe_to_yaml(recipe)  # says what runs, and loads again as the same run
    assert "fairl_answer_match" in resolved and "prediction_loss_only" not in resolved
    again = load_recipe(write_recipe(resolved, name="resolved.yaml"))
    assert recipe_to_dict(again) == recipe_to_dict(recipe)  # the same run (unread keys are not part of it)


def test_fai_rl_gsm8k_and_openmath_names_pick_their_templates(write_recipe, tmp_path):
    data = RL_DATA + '- name: "nvidia/OpenMathInstruct-2"\n  split: "train_1M"\n  prompt_column: "problem"\n'
    recipe = load_recipe(write_recipe(fairl_recipe("gspo", tmp_path / "run", data, model="fai-rl/tiny-sft")),
                         processes=2)
    assert [d.prompt_template for d in recipe.data.datasets] == ["gsm8k", "openmathinstruct"]


def test_gspo_recipe_for_several_gpus_names_the_launch_that_fits(write_recipe, tmp_path):
    found = problems(write_recipe(fairl_recipe("gspo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft")))
    assert any("training.num_generations: 8 does not divide the generation batch of 4" in p
               and "--num-gpus 2" in p for p in found), found


def test_ppo_value_model_is_also_the_reward_model_as_in_fai_rl(write_recipe, tmp_path):
    text = fairl_recipe("ppo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft",
                        model_extra='  value_model_name: "fai-rl/tiny-sft"\n')
    recipe = load_recipe(write_recipe(text))
    assert recipe.model.reward_model_name == "fai-rl/tiny-sft"
    assert any("as FAI-RL's PPO did" in n for n in recipe_notes(recipe))


def test_wandb_api_key_null_is_accepted_and_a_real_key_refused_without_echo(write_recipe, tmp_path):
    text = fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=SFT_TEMPLATE)
    assert load_recipe(write_recipe(text)).wandb.api_key is None
    secret = "0123456789abcdef0123456789abcdef01234567"
    found = problems(write_recipe(text.replace("api_key: null", f'api_key: "{secret}"')))
    assert any(p.split(": ", 2)[1] == "wandb.api_key" and "WANDB_API_KEY" in p for p in found), found
    assert secret not in "\n".join(found)


@pytest.mark.parametrize(("extra", "expected"), [
    ('  system_prompt: "Q: {prompt} A: {answr}"\n', "data.system_prompt: uses {answr}, which data.datasets[0]"),
    ('  system_prompt: "Q: {prompt"\n', "is not a valid template"),
    ('  user_prompt: "{prompt}"\n', "data.assistant_prompt: is null but data.user_prompt is set"),
    ('  system_prompt: "{}"\n', "uses a positional field"),
])
def test_template_problems_are_recipe_errors_before_any_row_is_read(write_recipe, tmp_path, extra, expected):
    found = problems(write_recipe(fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=extra)))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(("override", "expected"), [
    ("training.fp16=true", "training.fp16: true together with training.bf16 true"),
    ("model.attn_implementation=sdpa", "model.use_flash_attention: true together with model.attn_implementation"),
    ("data.max_prompt_length=4096", "data.max_prompt_length: 4096 must be greater than 0 and less than"),
    ("s3.enabled=true", "s3.bucket"),
])
def test_fai_rl_key_value_rules(write_recipe, tmp_path, override, expected):
    if "max_prompt_length" in override:  # read by GRPO/GSPO only
        text = fairl_recipe("grpo", tmp_path / "run", RL_DATA, model="fai-rl/tiny-sft")
    else:
        text = fairl_recipe("sft", tmp_path / "run", SFT_DATA, data_extra=SFT_TEMPLATE)
    extra = ["model.use_flash_attention=true"] if "attn" in override else []
    extra += ["s3.bucket=''"] if override.startswith("s3") else []
    found = problems(write_recipe(text), [override, *extra])
    assert any(expected in p for p in found), found
