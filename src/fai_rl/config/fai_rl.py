"""FAI-RL's meaning for the keys where it differs from ours, resolved once at load so the resolved recipe says what runs.

Roblox's FAI-RL (github.com/Roblox/FAI-RL) is the training system fai-rl implements; its recipes run here unchanged.
Where a FAI-RL recipe relies on FAI-RL behaviour that our schema spells differently, the value is filled in here and
one line says so:
  - `training.max_steps: -1` means "train for num_train_epochs" (null here);
  - `training.eval_steps` without evaluation data schedules nothing (FAI-RL passes it to a trainer with no eval set);
  - `training.deepspeed_config: configs/deepspeed/zero{1,3,3_auto}_config.json` (FAI-RL's shipped files) are our
    zero1 / zero3_offload / zero3 configs;
  - `data.max_prompt_length` gives GRPO/GSPO completions max_length - max_prompt_length tokens, as FAI-RL's GRPO;
  - GRPO/GSPO without `rewards:` get FAI-RL's math prompt template per dataset and its three default rewards;
  - PPO's `model.value_model_name` was also FAI-RL's reward model: without rewards it is ours too.
Our own defaults are unchanged: only a recipe that spells (or omits, for rewards) the FAI-RL way gets this meaning.
"""

from __future__ import annotations

from pathlib import Path

from fai_rl.algorithms import spec_of
from fai_rl.config.schema import Recipe, RewardSpec

# Set on a PPO recipe whose reward model is FAI-RL's value_model_name: a model without a trained score head is used
# as FAI-RL used it (a freshly initialised head, seeded) instead of being refused.
FRESH_REWARD_HEAD = "_fai_rl_fresh_reward_head"
# FAI-RL's shipped DeepSpeed files -> ours (zero3_config.json offloads optimizer and parameters to CPU).
FAI_RL_DEEPSPEED = {"zero1_config": "zero1", "zero3_config": "zero3_offload", "zero3_auto_config": "zero3"}
# FAI-RL's GRPO default rewards (trainers/grpo_trainer.py; its 4th, custom_reward_func, always returns 0).
FAI_RL_REWARDS = ("fairl_answer_match", "fairl_xml_format", "fairl_answer_digit")
# FAI-RL picks the template by dataset name (utils/dataset_utils.get_template_for_dataset); other names (local or
# s3 copies of the data) get the GSM8K template, whose answer extraction also handles answers without '####'.
FAI_RL_TEMPLATES = {"openai/gsm8k": "gsm8k", "nvidia/OpenMathInstruct-2": "openmathinstruct"}


def resolve_fai_rl_meaning(r: Recipe, given: set[str]) -> list[str]:
    """Fill in FAI-RL's meaning where the recipe asks for it (see the module doc); returns one note per change."""
    notes: list[str] = []
    t, d = r.training, r.data
    if t.max_steps == -1:
        t.max_steps = None  # FAI-RL's "-1 = train for num_train_epochs"; silent: it is exactly our null
    has_eval = bool(d.eval_datasets) or d.eval_split_ratio > 0
    if t.eval_steps is not None and not has_eval:
        notes.append(f"training.eval_steps: {t.eval_steps} but there is no evaluation data (data.eval_datasets or "
                     "data.eval_split_ratio), so no evaluation runs (as in FAI-RL).")
        t.eval_steps = None
    if isinstance(t.deepspeed_config, str) and not Path(t.deepspeed_config).expanduser().is_file():
        name = Path(t.deepspeed_config).name.removesuffix(".json")
        if Path(t.deepspeed_config).parent.name == "deepspeed" and name in FAI_RL_DEEPSPEED:
            ours = FAI_RL_DEEPSPEED[name]
            notes.append(f"training.deepspeed_config: '{t.deepspeed_config}' is FAI-RL's shipped {name}.json; using "
                         f"fai-rl's equivalent '{ours}' (recipes/deepspeed/{ours}.json).")
            t.deepspeed_config = ours
    if spec_of(t.algorithm).samples_groups and d.max_prompt_length is not None \
            and "training.max_completion_length" not in given and 0 < d.max_prompt_length < d.max_length:
        t.max_completion_length = d.max_length - d.max_prompt_length
        notes.append(f"training.max_completion_length: {t.max_completion_length} = data.max_length {d.max_length} "
                     f"- data.max_prompt_length {d.max_prompt_length} (FAI-RL's GRPO).")
    if spec_of(t.algorithm).samples_groups and not r.rewards and r.workflow.type == "single" \
            and not r.model.reward_model_name:
        notes.append(_fai_rl_grpo_defaults(r))
    if spec_of(t.algorithm).has_critic and r.model.value_model_name and not r.rewards and not r.model.reward_model_name:
        r.model.reward_model_name = r.model.value_model_name
        r.__dict__[FRESH_REWARD_HEAD] = True  # FAI-RL scored with that model's fresh head: allowed, said in the note
        notes.append(f"model.reward_model_name: none given, so model.value_model_name '{r.model.value_model_name}' "
                     "also scores the rewards, as FAI-RL's PPO did (a fresh score head unless it is a trained reward "
                     "model: give rewards: or model.reward_model_name for a meaningful reward).")
    return notes


def _fai_rl_grpo_defaults(r: Recipe) -> str:
    """FAI-RL's GRPO setup for a recipe without rewards: its prompt templates by dataset and its default rewards."""
    chosen = []
    for which in ("datasets", "eval_datasets"):
        for i, spec in enumerate(getattr(r.data, which)):
            if spec.prompt_template is None:
                spec.prompt_template = FAI_RL_TEMPLATES.get(spec.name, "gsm8k")
            chosen.append(f"data.{which}[{i}] {spec.prompt_template}")
    r.rewards = [RewardSpec(function=name) for name in FAI_RL_REWARDS]
    return (f"rewards: none given, so FAI-RL's {r.training.algorithm} defaults apply: rewards {', '.join(FAI_RL_REWARDS)} "
            f"(<answer> match 2.0, XML format up to 0.5, digit answer 0.5) on FAI-RL's prompt templates "
            f"({'; '.join(chosen)}); add rewards: to choose your own.")
