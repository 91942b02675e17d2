"""FAI-RL's RL data and rewards: its GSM8K / OpenMathInstruct prompt templates, its three default GRPO/GSPO rewards
with its scores, Anthropic/hh-rlhf preference text split into prompt and replies, and short CPU runs of FAI-RL-layout
DPO and GRPO recipes on that data (modules: data/templates.py, data/rl.py, rewards/fairl.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from fairl_format import fairl_recipe

from fai_rl.config import load_recipe
from fai_rl.data.rl import load_preference_rows, load_prompt_rows
from fai_rl.data.truncation import Truncations
from fai_rl.data.templates import template_answer, template_prompt
from fai_rl.errors import DataError
from fai_rl.rewards import BUILTINS, RewardFn, build_rewards

# FAI-RL's trainers/templates/gsm8k_template.py, written out by hand: the texts must match it byte for byte.
FAI_RL_SYSTEM = "\nRespond in the following format:\n\n<think>\n...\n</think>\n<answer>\n...\n</answer>\n"
FAI_RL_EXAMPLE = ("<think>\n9 is divisible by 3 and 8 is divisible by 2, but 7 is prime.\n</think>\n"
                  "<answer>\n7\n</answer>\n")


def fai_rl_conversation(question):
    return [
        {"role": "system", "content": FAI_RL_SYSTEM},
        {"role": "user", "content": "What is the largest single-digit prime number?"},
        {"role": "assistant", "content": FAI_RL_EXAMPLE},
        {"role": "user", "content": question},
    ]


def jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def recipe_for(tmp_path, algorithm, datasets):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": datasets},
        "training": {"algorithm": algorithm, "output_dir": str(tmp_path / "out")},
        **({} if algorithm == "dpo" else {"rewards": [{"function": "fairl_answer_match"}]}),
    }))
    return load_recipe(path)


def hh(*turns):
    """An hh-rlhf text: "\\n\\nHuman: ...\\n\\nAssistant: ..." from alternating turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# ----------------------------------------------------------------------------------------------------------------------
# Templates


def test_templates_render_fai_rls_conversation_and_its_reference_answers():
    assert template_prompt("How many legs do 3 cats have?") == fai_rl_conversation("How many legs do 3 cats have?")
    assert template_answer("gsm8k", "3 cats * 4 legs = <<3*4=12>>12 legs\n#### 12") == "12"
    assert template_answer("gsm8k", "a\n#### 1 #### 1234 ") == "1234"  # the text after the last ####
    # FAI-RL strips only the outer spaces, never the thousands separator (its GSM8KTemplate: split, strip).
    assert template_answer("gsm8k", "#### 1,234") == "1,234"
    assert template_answer("gsm8k", "  42 ") == "42"  # no ####: the whole answer, stripped
    assert template_answer("openmathinstruct", " \\frac{1}{2} ") == " \\frac{1}{2} "  # as is


def test_prompt_template_becomes_the_rows_prompt_and_answer(tmp_path):
    gsm = jsonl(tmp_path, "gsm.jsonl", [{"question": "2 + 2?", "answer": "2 and 2 is <<2+2=4>>4\n#### 4"}])
    omi = jsonl(tmp_path, "omi.jsonl", [{"problem": "Half of 1?", "expected_answer": "\\frac{1}{2}"}])
    train, _ = load_prompt_rows(recipe_for(tmp_path, "grpo", [
        {"name": gsm, "prompt_column": "question", "answer_column": "answer", "prompt_template": "gsm8k"},
        {"name": omi, "prompt_column": "problem", "answer_column": "expected_answer",
         "prompt_template": "openmathinstruct"},
    ]))
    assert train == [
        {"prompt": fai_rl_conversation("2 + 2?"), "answer": "4"},
        {"prompt": fai_rl_conversation("Half of 1?"), "expected_answer": "\\frac{1}{2}", "answer": "\\frac{1}{2}"},
    ]


def test_a_missing_template_column_names_the_key_and_the_line(tmp_path):
    wrong = jsonl(tmp_path, "w.jsonl", [{"problem": "q", "expected_answer": "1"}])
    with pytest.raises(DataError) as info:
        load_prompt_rows(recipe_for(tmp_path, "grpo", [{"name": wrong, "prompt_template": "gsm8k"}]))
    (problem,) = info.value.problems
    assert problem.startswith(f"data.datasets[0]: {wrong}:1 has columns [problem, expected_answer]")
    assert "data.datasets[0].prompt_column (now 'prompt') and data.datasets[0].answer_column (now 'answer')" in problem
    gappy = jsonl(tmp_path, "g.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q2"}])
    with pytest.raises(DataError) as info:
        load_prompt_rows(recipe_for(tmp_path, "grpo", [
            {"name": gappy, "prompt_column": "question", "prompt_template": "gsm8k"}]))
    (problem,) = info.value.problems
    assert problem.startswith(f"{gappy}:2: no 'answer' column (data.datasets[0].answer_column)"), problem


# ----------------------------------------------------------------------------------------------------------------------
# Rewards: FAI-RL's scores on hand-written completions, called through the registry as a trainer calls them


COMPLETIONS = [
    "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>\n",  # all four tags, 1 char after </answer>
    "<answer> 1,234 </answer> extra",  # two tags, 6 chars after; the separator is kept
    "no tags at all 42",  # extracted whole: 'no tags at all 42'
    "<think></think><think>\n<answer>12</answer>",  # <think> twice: no credit for it
]
ANSWERS = ["7", "1,234", "42", "13"]


@pytest.mark.parametrize(("name", "expected"), [
    ("fairl_answer_match", [2.0, 2.0, 0.0, 0.0]),
    ("fairl_xml_format", [0.5 - 0.001, 0.25 - 0.006, 0.0, 0.375]),
    ("fairl_answer_digit", [0.5, 0.0, 0.0, 0.5]),
])
def test_each_fairl_reward_gives_fai_rls_scores(name, expected):
    reward = RewardFn(BUILTINS[name], name=name)
    got = reward(prompts=["q"] * 4, completions=COMPLETIONS, answer=ANSWERS)
    assert got == pytest.approx(expected, abs=1e-12)


def test_answer_match_reads_another_column_when_told(tmp_path):
    reward = RewardFn(BUILTINS["fairl_answer_match"], kwargs={"column": "gold"})
    assert reward(prompts=None, completions=["<answer>5</answer>", "<answer>6</answer>"], gold=["5", 5]) == [2.0, 0.0]


# ----------------------------------------------------------------------------------------------------------------------
# DPO on Anthropic/hh-rlhf text pairs


def test_hh_rlhf_pairs_split_at_the_last_shared_assistant_turn(tmp_path):
    data = jsonl(tmp_path, "hh.jsonl", [
        {"chosen": hh("Hi", "Hello!", "What is 3 + 4?", "It is 7."),
         "rejected": hh("Hi", "Hello!", "What is 3 + 4?", "It is 8.")},
        {"chosen": "The sky is blue", "rejected": "The sky is green"},  # plain text: TRL's split as it is
    ])
    train, _ = load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": data}]))
    assert train == [
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "What is 3 + 4?"}],
         "chosen": [{"role": "assistant", "content": "It is 7."}],
         "rejected": [{"role": "assistant", "content": "It is 8."}]},
        {"prompt": [{"role": "user", "content": "The sky is"}],
         "chosen": [{"role": "assistant", "content": " blue"}],
         "rejected": [{"role": "assistant", "content": " green"}]},
    ]


def test_a_broken_hh_rlhf_row_is_named_by_file_and_line(tmp_path, capsys):
    data = jsonl(tmp_path, "bad.jsonl", [
        {"chosen": hh("Hi", "Yes"), "rejected": hh("Hi", "No")},  # fine
        {"chosen": hh("Hi", "Same"), "rejected": hh("Hi", "Same")},  # hh-rlhf holds such rows: skipped, counted
        {"chosen": "abc", "rejected": "xyz"},
        {"chosen": hh("Hi", "a"), "rejected": hh("Ho", "a")},
    ])
    with pytest.raises(DataError) as info:
        load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": data}]))
    assert len(info.value.problems) == 2
    no_prefix, early = info.value.problems
    assert (f"note: data.datasets[0]: 1 of 4 rows skipped ('chosen' and 'rejected' are the same text, so there is no "
            f"preference to learn; first: {data}:2)") in capsys.readouterr().out
    assert no_prefix.startswith(f"{data}:3: 'chosen' and 'rejected' share no prefix")
    assert "data.datasets[0].prompt_column" in no_prefix
    assert early.startswith(f"{data}:4: 'chosen' and 'rejected' differ before their first 'Assistant:' turn")


def test_hh_rlhf_mixed_with_a_prompt_column_source_is_one_conversational_data_set(tmp_path):
    from datasets import Dataset
    from trl.data_utils import is_conversational

    from fai_rl.backends.tinker.dpo import _pair_tokens
    from fai_rl.models.load import load_tokenizer

    hh_file = jsonl(tmp_path, "hh.jsonl", [{"chosen": hh("Hi", "Hey there"), "rejected": hh("Hi", "Go away")}])
    coconot = jsonl(tmp_path, "coconot.jsonl", [
        {"id": "c1", "prompt": "Tell me a secret", "chosen": "I cannot.", "rejected": "Sure: ...", "category": "x"}])
    recipe = recipe_for(tmp_path, "dpo", [{"name": hh_file}, {"name": coconot, "prompt_column": "prompt"}])
    train, _ = load_preference_rows(recipe)
    assert len(train) == 2 and all(is_conversational(row) for row in train)
    assert Dataset.from_list(train).features["prompt"] == Dataset.from_list(train[:1]).features["prompt"]
    # Tinker's DPO renders each pair through the chat template: the reply tokens are the assistant turn only.
    tokenizer = load_tokenizer(recipe.model)
    pair = _pair_tokens(tokenizer, 256, Truncations("pair", 256))(train[0])
    assert "Hi" in tokenizer.decode(pair.prompt) and "Human" not in tokenizer.decode(pair.prompt)
    assert tokenizer.decode(pair.chosen).startswith("Hey there")
    assert tokenizer.decode(pair.rejected).startswith("Go away")


# ----------------------------------------------------------------------------------------------------------------------
# Short CPU runs of FAI-RL-layout recipes


def metric_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_dpo_on_hh_rlhf_text_and_a_prompt_column_source_raises_the_margin(write_recipe, tmp_path):
    from fai_rl.cli.train import main

    problems = [(a, b) for a in range(10) for b in range(10)][::3]
    hh_rows = [{"chosen": hh("Hello", "Hi!", f"What is {a} + {b}?", str(a + b)),
                "rejected": hh("Hello", "Hi!", f"What is {a} + {b}?", str(a + b + 1))} for a, b in problems[:16]]
    coconot_rows = [{"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": str(a + b + 2)}
                    for a, b in problems[16:32]]
    datasets = f"""
- name: "{jsonl(tmp_path, 'hh.jsonl', hh_rows)}"
  split: "train"
  chosen_column: "chosen"
  rejected_column: "rejected"
- name: "{jsonl(tmp_path, 'coconot.jsonl', coconot_rows)}"
  split: "train"
  prompt_column: "prompt"
  chosen_column: "chosen"
  rejected_column: "rejected"
"""
    out = tmp_path / "dpo"
    text = fairl_recipe("dpo", out, datasets, model="fai-rl/tiny-sft", max_length=64, max_prompt_length=48, batch=8,
                        accumulation=1, learning_rate="2.0e-3", max_steps=12)
    assert main(["--recipe", str(write_recipe(text)), "training.warmup_steps=0", "training.logging_steps=1",
                 "training.bf16=false", "training.gradient_checkpointing=false"]) == 0
    rows = [r for r in metric_rows(out) if "rewards/margins" in r]
    first, last = rows[0], rows[-1]
    late = sum(r["rewards/margins"] for r in rows[-3:]) / 3
    assert late > first["rewards/margins"] + 0.05, rows
    assert sum(r["loss"] for r in rows[-3:]) / 3 < first["loss"], rows
    assert last["rewards/accuracies"] >= 0.5
    print(f"\nDPO on hh-rlhf + prompt-column pairs: margin {first['rewards/margins']:.3f} -> {late:.3f}, "
          f"loss {first['loss']:.3f} -> {last['loss']:.3f}, accuracy {last['rewards/accuracies']:.2f}")


@pytest.mark.slow
def test_grpo_without_rewards_runs_fai_rls_template_and_three_rewards(write_recipe, tmp_path):
    from fai_rl.cli.train import main

    # Sums of 7 and 8: after FAI-RL's long one-shot prompt, tiny-sft's answers drift to 6-9, so some are right.
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
            for a in range(1, 8) for b in range(1, 8) if a + b in (7, 8)]
    datasets = f"""
- name: "{jsonl(tmp_path, 'gsm.jsonl', rows)}"
  split: "train"
  prompt_column: "question"
  answer_column: "answer"
"""
    out = tmp_path / "grpo"
    text = fairl_recipe("grpo", out, datasets, model="fai-rl/tiny-sft", max_length=336, max_prompt_length=320,
                        batch=8, accumulation=1, max_steps=4)
    path = write_recipe(text)
    recipe = load_recipe(path)
    assert recipe.data.datasets[0].prompt_template == "gsm8k"  # FAI-RL's meaning, resolved at load
    assert [f.name for f in build_rewards(recipe)] == ["fairl_answer_match", "fairl_xml_format", "fairl_answer_digit"]
    assert main(["--recipe", str(path), "training.warmup_steps=0", "training.logging_steps=1",
                 "training.bf16=false", "training.gradient_checkpointing=false"]) == 0
    train = [r for r in metric_rows(out) if "reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for name in ("fairl_answer_match", "fairl_xml_format", "fairl_answer_digit"):
        assert all(f"rewards/{name}/mean" in r for r in train), train[0].keys()
    # tiny-sft answers a sum with bare digits and no tags: each such answer is "extracted" whole, as in FAI-RL, so it
    # earns the digit reward, no format credit, and 2.0 only when it is the sum: the 16 completions are scored apart.
    assert all(r["rewards/fairl_answer_digit/mean"] > 0 for r in train), train
    assert any(r["rewards/fairl_answer_match/std"] > 0 for r in train), train
