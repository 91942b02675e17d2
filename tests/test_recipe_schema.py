"""The recipe schema: defaults, overrides, and every kind of error, each naming its key, location and fix."""

from __future__ import annotations

import importlib

import dataclasses
import typing
from pathlib import Path

import pytest
import transformers
import yaml

from fai_rl.algorithms import spec_of
from fai_rl.config import load_recipe, recipe_to_yaml
from fai_rl.config.docs import render
from fai_rl.config.load import parse_key_path, redact
from fai_rl.config.schema import LR_SCHEDULERS, OPTIMIZERS, Recipe
from fai_rl.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
model:
  base_model_name: fai-rl/tiny
data:
  datasets:
    - name: fai-rl/arithmetic
training:
  algorithm: sft
  output_dir: runs/x
"""


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value.problems


def test_defaults_come_from_the_schema(write_recipe):
    r = load_recipe(write_recipe(BASE))
    assert isinstance(r, Recipe)
    assert r.training.learning_rate == 5e-5 and r.training.max_steps is None and r.training.backend == "local"
    assert r.data.datasets[0].split == "train" and r.data.datasets[0].prompt_column == "prompt"
    assert r.model.lora_target_modules == ["all-linear"] and r.wandb.enabled is False


def test_overrides_beat_recipe_and_are_typed_as_yaml(write_recipe):
    path = write_recipe(BASE + "  learning_rate: 1.0e-4\n  max_steps: 10\n")
    r = load_recipe(path, [
        "training.learning_rate=2e-5",  # YAML 1.1 reads this as a string: the float field still takes it
        "training.bf16=false",
        "training.save_total_limit=null",
        "model.lora_target_modules=[q_proj,v_proj]",
        "wandb.tags=[a, b]",
        "data.system_prompt=You add numbers.",
    ])
    assert r.training.learning_rate == 2e-5 and r.training.max_steps == 10
    assert r.training.bf16 is False and r.training.save_total_limit is None
    assert r.model.lora_target_modules == ["q_proj", "v_proj"] and r.wandb.tags == ["a", "b"]
    assert r.data.system_prompt == "You add numbers."


def test_list_index_overrides_edit_and_append(write_recipe):
    r = load_recipe(write_recipe(BASE), [
        "data.datasets[0].name=my/data",
        "data.datasets[0].split=test",
        "data.datasets[1].name=other.jsonl",
        "data.datasets[1].answer_column=solution",
    ])
    assert [d.name for d in r.data.datasets] == ["my/data", "other.jsonl"]
    assert r.data.datasets[0].split == "test" and r.data.datasets[1].answer_column == "solution"
    assert r.data.datasets[1].split == "train"  # the appended entry gets the schema defaults
    assert parse_key_path("data.datasets[12].name") == ["data", "datasets", 12, "name"]


def test_override_past_the_end_of_a_list_says_which_index_appends(write_recipe):
    (p,) = problems(write_recipe(BASE), ["data.datasets[3].name=x"])
    assert p == "command line: data.datasets[3]: index 3 is past the end (the list has 1 entries); use index 1 to append."


def test_unknown_key_suggests_the_close_key_with_file_line(write_recipe):
    path = write_recipe(BASE + "  lerning_rate: 1e-4\n")
    assert problems(path) == [f"{path}:9: training.lerning_rate: unknown key; did you mean training.learning_rate?"]


def test_key_in_the_wrong_section_points_at_the_right_one(write_recipe):
    path = write_recipe(BASE + "  base_model_name: x\n")
    (p,) = problems(path)
    assert p.endswith("training.base_model_name: unknown key; did you mean model.base_model_name?")


def test_all_error_kinds_are_reported_together(write_recipe):
    text = """\
model:
  base_model_name: fai-rl/tiny
  load_in_4bit: true
data:
  datasets:
    - name: fai-rl/arithmetic
training:
  algorithm: sfft
  max_steps: 1.5
  lerning_rate: 3
"""
    path = write_recipe(text)
    found = problems(path, ["training.seed=abc"])
    joined = "\n".join(found)
    assert len(found) == 6, joined
    assert f"{path}:8: training.algorithm: 'sfft' is not one of sft|cpt|dpo|ppo|grpo|gspo|rloo; did you mean 'sft'?" in found
    assert f"{path}:9: training.max_steps: 1.5 (float) is not valid; expected a whole number, e.g. 8." in found
    assert f"{path}:10: training.lerning_rate: unknown key; did you mean training.learning_rate?" in found
    assert "command line: training.seed: 'abc' (str) is not valid; expected a whole number, e.g. 8." in found
    assert any(p.startswith(f"{path}:7: training.output_dir: required key is missing") for p in found), joined
    # the cross-field rule still runs although the schema check failed
    assert any(p.startswith(f"{path}:3: model.load_in_4bit: true without LoRA") and "model.use_lora=true" in p
               for p in found), joined


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.algorithm=dpo", None),  # valid algorithm, columns distinct by default
        ("data.datasets[0].rejected_column=chosen", "DPO needs two different columns"),
        ("model.load_in_8bit=true", "set model.use_lora=true"),
        ("training.learning_rate=0", "must be greater than 0"),
        ("model.lora_dropout=1.5", "must be in [0, 1)"),
        ("training.deepspeed_config=nope.json", "'nope.json' does not exist"),
        ("data.eval_split_ratio=1.2", "must be in [0, 1)"),
        ("training.lr_scheduler_type=cosin", "did you mean 'cosine'?"),
        ("training.bf16=maybe", "expected true or false"),
        ("model=3", "expected a section"),
    ],
)
def test_rules_name_key_value_and_fix(write_recipe, override, expected):
    path = write_recipe(BASE)
    if expected is None:
        load_recipe(path, ["training.algorithm=dpo"] if override.startswith("training.algorithm") else [override])
        return
    found = problems(path, ["training.algorithm=dpo", override] if "rejected" in override else [override])
    assert any(expected in p for p in found), found


def test_qlora_needs_lora_and_passes_with_it(write_recipe):
    path = write_recipe(BASE)
    assert any("QLoRA needs LoRA" in p for p in problems(path, ["model.load_in_4bit=true"]))
    r = load_recipe(path, ["model.load_in_4bit=true", "model.use_lora=true"])
    assert r.model.load_in_4bit and r.model.use_lora


def test_yaml_syntax_error_and_duplicate_keys_name_the_line(write_recipe):
    (p,) = problems(write_recipe("model:\n  base_model_name: [unclosed\n"))
    assert ":3:" in p and "not valid YAML" in p
    dup = write_recipe(BASE + "  output_dir: runs/y\n", name="dup.yaml")
    assert problems(dup) == [f"{dup}:9: training.output_dir: key appears twice (first at line 8); keep one of them."]


def test_missing_recipe_file_and_malformed_override(tmp_path, write_recipe):
    assert "no such file" in problems(tmp_path / "nope.yaml")[0]
    (p,) = problems(write_recipe(BASE), ["training.learning_rate"])
    assert p.startswith("command line: 'training.learning_rate': an override must look like key.sub=value")


def test_interpolation_resolves(write_recipe):
    r = load_recipe(write_recipe(BASE.replace("runs/x", "runs/${training.algorithm}-${training.seed}")))
    assert r.training.output_dir == "runs/sft-42"


def test_every_algorithm_has_a_trainer_on_every_backend_and_a_missing_pair_is_a_recipe_error(write_recipe, monkeypatch):
    from fai_rl.backends import TRAINERS, check_dispatch
    from fai_rl.config.schema import ALGORITHMS, BACKENDS

    assert set(TRAINERS) == {(b, a) for b in BACKENDS for a in ALGORITHMS}
    for (backend, algorithm), module in TRAINERS.items():  # a pair the schema allows, and a module that imports
        assert callable(importlib.import_module(module).train)
        rewards = ["rewards[0].function=exact_match"] if spec_of(algorithm).samples else []
        load_recipe(write_recipe(BASE), [f"training.backend={backend}", f"training.algorithm={algorithm}", *rewards],
                    extra_rules=[check_dispatch])
    monkeypatch.delitem(TRAINERS, ("tinker", "sft"))
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(BASE), ["training.backend=tinker"], extra_rules=[check_dispatch])
    assert "training.algorithm: 'sft' on backend 'tinker' is not available" in info.value.problems[0]


def test_secrets_are_redacted_from_the_resolved_recipe(write_recipe):
    r = load_recipe(write_recipe(BASE), ["rewards[0].function=http", "rewards[0].kwargs={url: x, api_key: sk-123}",
                                         "data.eval_split_ratio=0.1"])
    text = recipe_to_yaml(r)
    assert "sk-123" not in text and "api_key: '***'" in text
    assert redact({"headers": {"Authorization": "Bearer t"}, "n": 1}) == {"headers": {"Authorization": "***"}, "n": 1}


def _sections(cls):
    yield cls
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if dataclasses.is_dataclass(inner):
            yield from _sections(inner)


def test_every_field_is_documented_and_the_reference_is_current():
    undocumented = [
        f"{cls.__name__}.{f.name}"
        for cls in _sections(Recipe)
        for f in dataclasses.fields(cls)
        if not f.metadata.get("help") and not dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])
    ]
    assert undocumented == []
    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == render(), "docs/recipe-reference.md is stale: run `make docs`"


def test_choice_lists_match_transformers():
    assert set(LR_SCHEDULERS) <= {s.value for s in transformers.SchedulerType}
    assert set(OPTIMIZERS) <= {o.value for o in transformers.training_args.OptimizerNames}


def test_resolved_recipe_round_trips(write_recipe, tmp_path):
    r = load_recipe(write_recipe(BASE), ["training.max_steps=7"])
    again = load_recipe(write_recipe(recipe_to_yaml(r), name="resolved.yaml"))
    assert again == r
    assert yaml.safe_load(recipe_to_yaml(r))["training"]["max_steps"] == 7


RL = BASE.replace("algorithm: sft", "algorithm: grpo") + "rewards:\n  - function: exact_match\n"


def test_gspo_is_grpo_with_the_papers_defaults_each_overridable(write_recipe):
    path = write_recipe(RL)
    grpo = load_recipe(path).training
    assert (grpo.importance_sampling_level, grpo.loss_type, grpo.epsilon, grpo.beta) == ("token", "dapo", 0.2, 0.0)
    gspo = load_recipe(path, ["training.algorithm=gspo"]).training
    assert (gspo.importance_sampling_level, gspo.loss_type, gspo.beta) == ("sequence", "grpo", 0.0)
    assert (gspo.epsilon, gspo.epsilon_high) == (3e-4, 4e-4)
    tuned = load_recipe(path, ["training.algorithm=gspo", "training.epsilon=1e-3", "training.loss_type=dr_grpo"])
    assert tuned.training.epsilon == 1e-3 and tuned.training.epsilon_high == 4e-4
    assert tuned.training.loss_type == "dr_grpo"
    assert "epsilon: 0.0003" in recipe_to_yaml(gspo_recipe := load_recipe(path, ["training.algorithm=gspo"]))
    assert gspo_recipe.training.algorithm == "gspo"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["training.algorithm=gspo", "training.loss_type=dapo"], "training.loss_type: 'dapo' does not fit GSPO"),
        (["training.algorithm=gspo", "training.importance_sampling_level=token"], "turns GSPO into GRPO"),
        (["training.num_generations=3"], "training.num_generations: 3 does not divide the generation batch of 8"),
        (["training.num_generations=1"], "must be at least 2"),
        (["workflow.type=solver_judge", "rewards=[]"], "rewards: is empty, but grpo learns from rewards"),
        (["training.temperature=0"], "training.temperature: 0.0 must be greater than 0"),
        (["data.eval_split_ratio=0.1", "training.per_device_eval_batch_size=12"], "not a multiple of"),
        (["data.eval_split_ratio=0.1", "training.num_generations_eval=5"],
         "training.per_device_eval_batch_size: 8 is not a multiple of training.num_generations_eval (5)"),
        (["training.num_generations_eval=0"], "training.num_generations_eval: 0 must be at least 1"),
        (["training.algorithm=ppo", "training.optim=adafactor"], "training.optim: 'adafactor' is not offered by PPO"),
        (["training.algorithm=ppo", "training.gradient_accumulation_steps=2", "training.num_mini_batches=3"],
         "divide the rollout batch of 16 prompts (per_device_train_batch_size 8 x gradient_accumulation_steps 2)"),
        (["training.algorithm=dpo", "training.dpo_loss_type=[sigmoid, hinj]"],
         "training.dpo_loss_type[1]: 'hinj' is not a DPO loss; did you mean 'hinge'?"),
        (["training.algorithm=dpo", "training.dpo_loss_type=[sigmoid, sft]", "training.dpo_loss_weights=[1.0]"],
         "has 1 weights for 2 losses"),
        (["training.algorithm=dpo", "training.beta=0"], "must be greater than 0 for DPO"),
        (["training.algorithm=ppo", "training.num_mini_batches=3"], "divide the rollout batch of 8 prompts"),
        (["training.algorithm=ppo", "training.lam=1.5"], "training.lam: 1.5 must be in [0, 1]"),
        (["training.algorithm=ppo", "rewards=[]"], "or set model.reward_model_name"),
        (["training.algorithm=dpo"], "rewards: DPO learns from preference pairs and reads no rewards"),
    ],
)
def test_rl_rules_name_key_value_and_fix(write_recipe, overrides, expected):
    found = problems(write_recipe(RL), overrides)
    assert any(expected in p for p in found), found


def test_ppo_accepts_a_reward_model_instead_of_functions(write_recipe):
    r = load_recipe(write_recipe(RL), ["training.algorithm=ppo", "rewards=[]", "model.reward_model_name=my/rm"])
    assert r.model.reward_model_name == "my/rm" and r.rewards == []
