"""Prompt rows (GRPO, GSPO, PPO) and preference pairs (DPO): shapes, column pass-through, errors by file:line."""

from __future__ import annotations

import json

import pytest
import yaml

from fai_rl.config import load_recipe
from fai_rl.data.rl import load_preference_rows, load_prompt_rows
from fai_rl.errors import DataError


def recipe_for(tmp_path, algorithm, datasets, **data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": datasets, **data},
        "training": {"algorithm": algorithm, "output_dir": str(tmp_path / "out")},
        **({} if algorithm == "dpo" else {"rewards": [{"function": "exact_match"}]}),  # DPO reads none
    }))
    return load_recipe(path)


def jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompt_rows_from_text_with_system_prompt_and_columns(tmp_path):
    data = jsonl(tmp_path, "p.jsonl", [{"question": "2+2?", "solution": "4", "level": 1}])
    spec = {"name": data, "prompt_column": "question", "answer_column": "solution"}
    train, evaluation = load_prompt_rows(recipe_for(tmp_path, "grpo", [spec], system_prompt="Be brief."))
    assert evaluation == []
    assert train == [{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "solution": "4", "level": 1, "answer": "4",  # the answer column is also offered as `answer`
    }]


def test_prompt_rows_from_conversations_stop_at_the_last_user_turn(tmp_path):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    data = jsonl(tmp_path, "c.jsonl", [{"messages": convo}])
    (row,), _ = load_prompt_rows(recipe_for(tmp_path, "grpo", [{"name": data}]))
    assert row["prompt"] == convo[:3]


def test_prompt_row_errors_name_file_line(tmp_path):
    data = jsonl(tmp_path, "bad.jsonl", [{"prompt": "ok"}, {"prompt": ""},
                                         {"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError) as info:
        load_prompt_rows(recipe_for(tmp_path, "grpo", [{"name": data}]))
    assert info.value.problems == [
        f"{data}:2: 'prompt' must be non-empty text, got ''.",
        f"{data}:3: 'messages' has no user turn to prompt with.",
    ]
    nothing = jsonl(tmp_path, "none.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"data.datasets\[0\].prompt_column \(now 'prompt'\)"):
        load_prompt_rows(recipe_for(tmp_path, "grpo", [{"name": nothing}]))


def test_preference_rows_from_text_and_from_conversations(tmp_path):
    text = jsonl(tmp_path, "t.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    convo = jsonl(tmp_path, "c.jsonl", [{
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
    }])
    train, _ = load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": text}, {"name": convo}]))
    assert train == [
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello!"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
    ]


def test_preference_row_errors(tmp_path):
    data = jsonl(tmp_path, "bad.jsonl", [
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
         "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]},
    ])
    with pytest.raises(DataError) as info:
        load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": data, "prompt_column": "prompt"}]))
    first, second = info.value.problems[:2]
    assert first.startswith(f"{data}:1: chosen and rejected are the same reply")
    assert second.startswith(f"{data}:2: 'chosen' must be non-empty text")
    no_pairs = jsonl(tmp_path, "np.jsonl", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"data.datasets\[0\].chosen_column and data.datasets\[0\].rejected_column"):
        load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": no_pairs}]))
    mismatched = jsonl(tmp_path, "mm.jsonl", [{
        "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
        "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]}])
    with pytest.raises(DataError, match="must share every turn but the last"):
        load_preference_rows(recipe_for(tmp_path, "dpo", [{"name": mismatched}]))


def test_eval_split_applies_to_prompt_rows(tmp_path):
    data = jsonl(tmp_path, "p.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(20)])
    train, evaluation = load_prompt_rows(recipe_for(tmp_path, "grpo", [{"name": data}], eval_split_ratio=0.25))
    assert len(train) == 15 and len(evaluation) == 5
    assert not {r["answer"] for r in train} & {r["answer"] for r in evaluation}


def test_render_prompts_cuts_long_prompts_from_the_left_and_says_how_many():
    from fai_rl.config.schema import ModelConfig
    from fai_rl.data.rl import render_prompts
    from fai_rl.models.load import load_tokenizer

    tok = load_tokenizer(ModelConfig(base_model_name="fai-rl/tiny-sft"))
    rows = [{"prompt": [{"role": "user", "content": "What is 7 + 5? " * 20}]}, {"prompt": [{"role": "user", "content": "hi"}]}]
    full = render_prompts(tok, rows)
    with pytest.warns(UserWarning, match="1 of 2 prompts longer than data.max_length=32 tokens were cut from the left"):
        cut = render_prompts(tok, rows, 32)
    assert cut == [full[0][-32:], full[1]] and len(full[0]) > 32


def test_tinker_dpo_pairs_fit_max_length_and_what_is_cut_is_counted():
    from fai_rl.backends.tinker.dpo import _pair_tokens
    from fai_rl.config.schema import ModelConfig
    from fai_rl.data.truncation import Truncations
    from fai_rl.models.load import load_tokenizer

    tok = load_tokenizer(ModelConfig(base_model_name="fai-rl/tiny-sft"))
    row = {"prompt": [{"role": "user", "content": "What is 7 + 5?"}],
           "chosen": [{"role": "assistant", "content": "12, since 7 + 3 = 10 and 2 more is 12."}],
           "rejected": [{"role": "assistant", "content": "13"}]}
    whole = _pair_tokens(tok, 4096, Truncations("pair", 4096))(row)
    prompt, chosen, rejected = len(whole.prompt), len(whole.chosen), len(whole.rejected)
    cuts = Truncations("pair", prompt + rejected)  # the rejected sequence fits exactly, the chosen one does not
    pair = _pair_tokens(tok, prompt + rejected, cuts)(row)
    assert (pair.prompt, pair.rejected, pair.chosen) == (whole.prompt, whole.rejected, whole.chosen[:rejected])
    assert cuts.metrics() == {"truncated_pairs": 1.0, "truncated_pair_tokens": float(chosen - rejected)}
    short = Truncations("pair", 10)  # a prompt over the limit keeps its last 9 tokens and each reply its first
    pair = _pair_tokens(tok, 10, short)(row)
    assert (pair.prompt, pair.chosen, pair.rejected) == (whole.prompt[-9:], whole.chosen[:1], whole.rejected[:1])
    assert short.tokens == 2 * (prompt - 9) + (chosen - 1) + (rejected - 1)
