"""The data layer: every source kind, exact error locations, loss masks under two chat templates, and prepare_sft_data.

Expected values are worked out by hand. The `fai-rl/tiny` tokenizer is byte-level with no merges, so an ASCII
character is one token and `<|im_start|>` / `<|im_end|>` are one token each; that makes token counts countable here.
Only the shipped tokenizer files are read (no weights are built or loaded).
"""

from __future__ import annotations

import csv
import json
import random
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from fai_rl.config.load import load_recipe
from fai_rl.data.formats import SFTExample
from fai_rl.data.prepare import load_sft_examples, prepare_sft_data
from fai_rl.data.sources import MAX_REPORTED, load_source
from fai_rl.data.tokenize import IGNORE, _prefix_span, render_with_loss_spans, tokenize_sft
from fai_rl.errors import DataError

KEY0 = "data.datasets[0]"

# A 2-exchange conversation and its ChatML rendering, written out by hand from the tiny model's template.
CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye now"},
    {"role": "assistant", "content": "Goodbye."},
]
CONVO_CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
    "<|im_start|>user\nBye now<|im_end|>\n"
    "<|im_start|>assistant\nGoodbye.<|im_end|>\n"
)

# Llama-3 style: a BOS, role headers, `<|eot_id|>` after each turn and no newline between turns.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# ChatML, but the *last* assistant turn gets an empty think block (as Qwen3-style templates do): rendering the
# conversation up to an earlier reply puts the block there, the full rendering does not, so the prefix property
# fails for every reply but the last one and the loss mask has to be found by searching the reply text.
THINK = "<think>\n\n</think>\n\n"
LAST_TURN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['role'] == 'assistant' and loop.last -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _tiny_dir() -> Path:
    return Path(str(resources.files("fai_rl.models").joinpath("tiny")))


def _load_tiny_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_tiny_dir()))
    assert tok.is_fast
    if tok.pad_token is None:  # what fai_rl.models.load.load_tokenizer does
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def tok():
    return _load_tiny_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    t = _load_tiny_tokenizer()
    assert t.add_tokens(LLAMA3_SPECIALS, special_tokens=True) == 4
    t.chat_template = LLAMA3_TEMPLATE
    t.eos_token = "<|eot_id|>"
    return t


@pytest.fixture(scope="module")
def think_tok():
    t = _load_tiny_tokenizer()
    t.chat_template = LAST_TURN_TEMPLATE
    return t


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' parquet cache out of the home directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_recipe(tmp_path: Path, datasets: list[dict], overrides: list[str] | None = None, **data):
    """Write a minimal SFT recipe YAML into tmp_path and load it (through the real schema check)."""
    tree = {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": datasets, **data},
        "training": {"algorithm": "sft", "output_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return load_recipe(path, overrides or [])


def data_error(fn, *args) -> list[str]:
    with pytest.raises(DataError) as info:
        fn(*args)
    return info.value.problems


def loss_segments(tok, t) -> list[str]:
    """The decoded runs of consecutive loss tokens of a Tokenized (labels are the ids themselves where loss is on)."""
    assert len(t.input_ids) == len(t.labels)
    segments, run = [], []
    for tid, label in zip(t.input_ids, t.labels):
        if label == IGNORE:
            if run:
                segments.append(run)
            run = []
        else:
            assert label == tid
            run.append(tid)
    if run:
        segments.append(run)
    return [tok.decode(s) for s in segments]


def chat(*pairs: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for k, text in enumerate(pairs):
        msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
    return msgs


def n_tokens(text: str, specials: list[str]) -> int:
    """Tokens of an ASCII text for the byte-level tiny tokenizer: one per character, one per special token."""
    for sp in specials:
        text = text.replace(sp, "\0")
    return len(text)


def chatml_len(prompt: str, answer: str) -> int:
    """Tokens of [user: prompt, assistant: answer] in ChatML with the byte-level tiny tokenizer."""
    # <|im_start|> "user\n"(5) prompt <|im_end|> "\n", then <|im_start|> "assistant\n"(10) answer <|im_end|> "\n"
    return (1 + 5 + len(prompt) + 2) + (1 + 10 + len(answer) + 2)


# ---------------------------------------------------------------------------------------------------------------------
# 1. loading each source kind


def test_jsonl_chat_messages(tmp_path):
    rows = [
        {"messages": chat("What is 2+2?", "4"), "extra": 1},
        {"messages": chat("Hi", "Hello", "Bye", "Bye!", system="Be nice.")},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    recipe = make_recipe(tmp_path, [{"name": str(path)}])
    source = load_source(recipe.data.datasets[0], KEY0)
    assert source.rows == rows
    assert [source.origin(0), source.origin(1)] == [f"{path}:1", f"{path}:2"]
    examples, formats = load_sft_examples(recipe)
    assert formats == {KEY0: "chat"}
    assert [e.kind for e in examples] == ["chat", "chat"]
    assert examples[0].messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert examples[1].messages == rows[1]["messages"]
    assert all(e.text is None for e in examples)


def test_jsonl_prompt_answer(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Capital of France?", "answer": "Paris"}])
    examples, formats = load_sft_examples(make_recipe(tmp_path, [{"name": str(path)}]))
    assert formats == {KEY0: "completion"}
    assert len(examples) == 1 and examples[0].kind == "completion"
    assert examples[0].messages == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]


def test_csv_with_custom_columns(tmp_path):
    path = tmp_path / "qa.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "response"])
        w.writerow(["1", "Two plus two?", "4"])
        w.writerow(["2", "Say hi,\nplease", 'hi, "you"'])  # comma, newline and quotes inside fields
    recipe = make_recipe(
        tmp_path, [{"name": str(path), "prompt_column": "question", "answer_column": "response"}]
    )
    examples, formats = load_sft_examples(recipe)
    assert formats == {KEY0: "completion"}
    assert [e.messages for e in examples] == [
        [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Say hi,\nplease"}, {"role": "assistant", "content": 'hi, "you"'}],
    ]


def test_csv_without_column_mapping_is_a_missing_column_error(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,response\nA?,b\n", encoding="utf-8")
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 1
    assert problems[0].startswith(f"{KEY0}: ")
    assert "[question, response]" in problems[0]
    assert f"{KEY0}.prompt_column" in problems[0] and f"{KEY0}.answer_column" in problems[0]


def test_parquet_text(tmp_path):
    import datasets

    path = tmp_path / "lm.parquet"
    datasets.Dataset.from_list([{"text": "first doc"}, {"text": "second doc"}, {"text": "third"}]).to_parquet(
        str(path)
    )
    recipe = make_recipe(tmp_path, [{"name": str(path), "max_samples": 2}])
    examples, formats = load_sft_examples(recipe)
    assert formats == {KEY0: "text"}
    assert [(e.kind, e.text, e.messages) for e in examples] == [
        ("text", "first doc", None),
        ("text", "second doc", None),
    ]


def test_dataset_dir_picks_the_split(tmp_path):
    import datasets

    train = [{"messages": chat("train q", "train a")}]
    test = [{"messages": chat("test q1", "test a1")}, {"messages": chat("test q2", "test a2")}]
    ds_dir = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    ).save_to_disk(str(ds_dir))

    examples, formats = load_sft_examples(make_recipe(tmp_path, [{"name": str(ds_dir), "split": "test"}]))
    assert formats == {KEY0: "chat"}
    assert [e.messages for e in examples] == [r["messages"] for r in test]

    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(ds_dir)}]))  # split defaults to train
    assert [e.messages for e in examples] == [r["messages"] for r in train]

    source = load_source(make_recipe(tmp_path, [{"name": str(ds_dir), "split": "test"}]).data.datasets[0], KEY0)
    assert source.origin(1) == f"{ds_dir}[test]:1"


def test_dataset_dir_unknown_split(tmp_path):
    import datasets

    ds_dir = tmp_path / "ds"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"text": "a"}]), "test": datasets.Dataset.from_list([{"text": "b"}])}
    ).save_to_disk(str(ds_dir))
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(ds_dir), "split": "dev"}]))
    assert len(problems) == 1
    assert problems[0].startswith(f"{KEY0}.split: 'dev'")
    assert "train, test" in problems[0]


def test_json_array_file(tmp_path):
    rows = [{"prompt": "p1", "answer": "a1"}, {"prompt": "p2", "answer": "a2"}, {"prompt": "p3", "answer": "a3"}]
    path = tmp_path / "arr.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    recipe = make_recipe(tmp_path, [{"name": str(path), "max_samples": 2}])
    examples, formats = load_sft_examples(recipe)
    assert formats == {KEY0: "completion"}
    assert [(e.messages[0]["content"], e.messages[1]["content"]) for e in examples] == [("p1", "a1"), ("p2", "a2")]
    assert load_source(recipe.data.datasets[0], KEY0).origin(1) == f"{path}[1]"


def test_json_array_bad_item_is_named(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"prompt": "p", "answer": "a"}, {"prompt": "p", "answer": ""}]), encoding="utf-8")
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}[1]: 'answer' must be non-empty text")


def test_builtin_task(tmp_path):
    recipe = make_recipe(tmp_path, [{"name": "fai-rl/arithmetic", "split": "test", "max_samples": 7}])
    examples, formats = load_sft_examples(recipe)
    assert formats == {KEY0: "completion"}
    assert len(examples) == 7
    for e in examples:
        user, assistant = e.messages
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        m = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", user["content"])
        assert m, user["content"]
        a, op, b = int(m[1]), m[2], int(m[3])
        assert assistant["content"] == str(a + b if op == "+" else a - b)
    full = load_sft_examples(make_recipe(tmp_path, [{"name": "fai-rl/arithmetic", "split": "test"}]))[0]
    assert len(full) == 200
    assert [e.messages for e in full[:7]] == [e.messages for e in examples]  # max_samples keeps the first rows


def test_max_samples_on_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(6)])
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(path), "max_samples": 4}]))
    assert [e.text for e in examples] == ["row 0", "row 1", "row 2", "row 3"]
    # larger than the file: everything
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(path)}], [f"{KEY0}.max_samples=100"]))
    assert len(examples) == 6


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"messages": chat("q", "a"), "prompt": "p", "answer": "a", "text": "t"}, "chat"),
        ({"prompt": "p", "answer": "a", "text": "t"}, "completion"),
        ({"prompt": "p", "text": "t"}, "text"),  # a prompt without an answer is not completion data
        ({"answer": "a", "text": "t"}, "text"),
        ({"text": "t"}, "text"),
    ],
)
def test_format_detection_order(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    _, formats = load_sft_examples(make_recipe(tmp_path, [{"name": str(path)}]))
    assert formats == {KEY0: expected}


def test_formats_per_source_and_concatenation_order(tmp_path):
    chat_path = write_jsonl(tmp_path / "c.jsonl", [{"messages": chat("q", "a")}])
    text_path = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    recipe = make_recipe(tmp_path, [{"name": str(chat_path)}, {"name": str(text_path)}])
    examples, formats = load_sft_examples(recipe)
    assert formats == {"data.datasets[0]": "chat", "data.datasets[1]": "text"}
    assert [e.kind for e in examples] == ["chat", "text"]


# ---------------------------------------------------------------------------------------------------------------------
# 2. errors, with their exact location


def test_jsonl_bad_line_and_non_object_line_reported_together(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"text": "ok"}),  # 1
                '{"text": "unterminated',  # 2: not JSON
                "",  # 3: blank lines are skipped, but still counted
                json.dumps({"text": "ok again"}),  # 4
                "[1, 2]",  # 5: JSON, but not an object
                json.dumps({"text": "fine"}),  # 6
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:2: not valid JSON")
    assert problems[1].startswith(f"{path}:5: ")
    assert "not an object" in problems[1] and "list" in problems[1]


def test_jsonl_strings_with_unicode_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 / U+2029 / U+0085 raw inside strings; they are not line breaks
    # of a JSONL file, so neither the rows nor the line numbers may change because of them.
    path = tmp_path / "u.jsonl"
    lines = [
        json.dumps({"text": "para one\u2028para two"}, ensure_ascii=False),
        json.dumps({"text": "a\u2029b\x85c"}, ensure_ascii=False),
        '{"text": ',  # line 3: broken
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: not valid JSON")

    path.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(path)}]))
    assert [e.text for e in examples] == ["para one\u2028para two", "a\u2029b\x85c"]


def test_files_with_a_utf8_bom(tmp_path):
    # Spreadsheet exports ("CSV UTF-8") start with a byte-order mark; it is not part of the first column's name.
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufeffprompt,answer\nQ?,A\n".encode())
    examples, formats = load_sft_examples(make_recipe(tmp_path, [{"name": str(csv_path)}]))
    assert formats == {KEY0: "completion"}
    assert examples[0].messages[0]["content"] == "Q?"

    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(("\ufeff" + json.dumps({"text": "t"}) + "\n").encode())
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(jsonl_path)}]))
    assert [e.text for e in examples] == ["t"]


def test_bad_chat_and_completion_rows_named_by_file_and_line(tmp_path):
    chat_path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": chat("fine", "fine")},  # 1
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},  # 2
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "only a question"}]},  # 3
            {"messages": chat("fine", "fine")},  # 4
        ],
    )
    qa_path = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"prompt": "ok", "answer": "ok"}, {"prompt": "", "answer": "orphan"}, {"prompt": "  ", "answer": "x"}],
    )
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(chat_path)}, {"name": str(qa_path)}]))
    assert len(problems) == 4  # every bad row of every source, together
    assert problems[0].startswith(f"{chat_path}:2: messages[1].role is 'bot'")
    assert "assistant" in problems[0]  # says which roles are allowed
    assert problems[1].startswith(f"{chat_path}:3: 'messages' has no assistant turn")
    assert problems[2].startswith(f"{qa_path}:2: 'prompt' must be non-empty text, got ''")
    assert problems[3].startswith(f"{qa_path}:3: 'prompt' must be non-empty text, got '  '")


def test_csv_bad_rows_named_by_their_physical_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(
        "prompt,answer\n"  # 1
        "good,yes\n"  # 2
        '"a prompt over\n'  # 3
        'two lines",fine\n'  # 4
        "\n"  # 5 (blank)
        ",no prompt\n"  # 6
        "short row\n"  # 7: no answer field at all
        "last,ok\n",  # 8
        encoding="utf-8",
    )
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:6: 'prompt' must be non-empty text, got ''")
    assert problems[1].startswith(f"{path}:7: 'answer' must be non-empty text, got None")


def test_missing_columns_name_the_keys_and_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "reply": "r"}])
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 1
    p = problems[0]
    assert "[question, reply]" in p
    for key in ("messages_column", "prompt_column", "answer_column", "text_column"):
        assert f"{KEY0}.{key}" in p
    # the second source is named by its own index
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": "t"}])
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(good)}, {"name": str(path)}]))
    assert "data.datasets[1].messages_column" in problems[0] and KEY0 not in problems[0]


def test_missing_file_names_the_name_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("./nope.jsonl", "nope.jsonl", "sub/nope.csv"):
        problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": name}]))
        assert len(problems) == 1
        assert problems[0].startswith(f"{KEY0}.name: '{name}' does not exist"), problems[0]


def test_unknown_builtin_split_names_the_split_key(tmp_path):
    recipe = make_recipe(tmp_path, [{"name": "fai-rl/arithmetic"}], [f"{KEY0}.split=validation"])
    problems = data_error(load_sft_examples, recipe)
    assert len(problems) == 1
    assert problems[0].startswith(f"{KEY0}.split: ")
    assert "'validation'" in problems[0] and "train, test" in problems[0]


def test_eval_dataset_errors_name_eval_keys(tmp_path):
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": "t"}])
    recipe = make_recipe(tmp_path, [{"name": str(good)}], eval_datasets=[{"name": "fai-rl/arithmetic", "split": "x"}])
    problems = data_error(prepare_sft_data, recipe, None)  # fails before the tokenizer is needed
    assert problems[0].startswith("data.eval_datasets[0].split: ")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert problems[0].startswith(f"{KEY0}.name: ") and "no rows" in problems[0]


def test_more_than_ten_bad_rows_are_capped(tmp_path):
    n_bad = MAX_REPORTED + 3
    assert MAX_REPORTED == 10
    rows = [{"prompt": "good", "answer": "a"}] + [{"prompt": "", "answer": "a"}] * n_bad
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert len(problems) == 11
    assert [p.split(": ", 1)[0] for p in problems[:10]] == [f"{path}:{line}" for line in range(2, 12)]
    assert problems[10] == "... and 3 more"


def test_more_than_ten_bad_json_lines_are_capped(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("not json\n" * 12 + json.dumps({"text": "t"}) + "\n", encoding="utf-8")
    problems = data_error(load_sft_examples, make_recipe(tmp_path, [{"name": str(path)}]))
    assert [p.split(": ", 1)[0] for p in problems[:10]] == [f"{path}:{line}" for line in range(1, 11)]
    assert problems[10:] == ["... and 2 more"]


# ---------------------------------------------------------------------------------------------------------------------
# 3. loss masks on the tiny tokenizer (ChatML)


def test_chatml_rendering_is_what_the_mask_is_placed_on(tok):
    full, _ = render_with_loss_spans(CONVO, tok, "assistant")
    assert full == CONVO_CHATML
    t = tokenize_sft(SFTExample(messages=CONVO), tok, "assistant", 10_000)
    assert tok.decode(t.input_ids) == CONVO_CHATML
    # byte-level: every ASCII character is a token, each <|im_start|> / <|im_end|> one token
    assert len(t.input_ids) == t.full_length == n_tokens(CONVO_CHATML, ["<|im_start|>", "<|im_end|>"])


def test_loss_on_assistant_covers_both_replies_and_their_end_of_turn(tok):
    full, spans = render_with_loss_spans(CONVO, tok, "assistant")
    assert [full[s:e] for s, e in spans] == ["Hello!<|im_end|>\n", "Goodbye.<|im_end|>\n"]
    t = tokenize_sft(SFTExample(messages=CONVO), tok, "assistant", 10_000)
    assert loss_segments(tok, t) == ["Hello!<|im_end|>\n", "Goodbye.<|im_end|>\n"]
    assert sum(label != IGNORE for label in t.labels) == len("Hello!") + 2 + len("Goodbye.") + 2


@pytest.mark.parametrize("loss_on", ["last_assistant", "completion"])
def test_loss_on_last_assistant_and_completion(tok, loss_on):
    full, spans = render_with_loss_spans(CONVO, tok, loss_on)
    assert [full[s:e] for s, e in spans] == ["Goodbye.<|im_end|>\n"]
    t = tokenize_sft(SFTExample(messages=CONVO), tok, loss_on, 10_000)
    assert loss_segments(tok, t) == ["Goodbye.<|im_end|>\n"]
    # the loss sits at the very end of the sequence
    n = len("Goodbye.") + 2
    assert all(label == IGNORE for label in t.labels[:-n]) and t.labels[-n:] == t.input_ids[-n:]


def test_loss_on_all(tok):
    t = tokenize_sft(SFTExample(messages=CONVO), tok, "all", 10_000)
    assert t.labels == t.input_ids
    assert loss_segments(tok, t) == [CONVO_CHATML]


def test_reply_repeating_user_text_is_masked_at_the_reply(tok):
    # the reply text also occurs in the user turn and the system prompt: only the assistant's copy carries loss
    msgs = chat("Say ok", "ok", "Again: ok", "ok", system="Answer ok")
    t = tokenize_sft(SFTExample(messages=msgs), tok, "assistant", 10_000)
    assert loss_segments(tok, t) == ["ok<|im_end|>\n", "ok<|im_end|>\n"]
    first_loss = next(k for k, label in enumerate(t.labels) if label != IGNORE)
    assert tok.decode(t.input_ids[:first_loss]).endswith("<|im_start|>user\nSay ok<|im_end|>\n<|im_start|>assistant\n")


def test_conversation_that_opens_with_the_assistant(tok):
    # a greeting first (no system prompt): the assistant header before it is template, not reply, so no loss on it
    msgs = [
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Add 2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    t = tokenize_sft(SFTExample(messages=msgs), tok, "assistant", 10_000)
    segments = loss_segments(tok, t)
    # the opening reply is located by its text, so its span ends with the EOS (<|im_end|>), not the newline after it
    assert segments == ["Hi! How can I help?<|im_end|>", "5<|im_end|>\n"]
    assert t.labels[0] == IGNORE  # the first <|im_start|>


def test_completion_rows_train_only_the_answer(tmp_path, tok):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Two plus two?", "answer": "4"}])
    recipe = make_recipe(tmp_path, [{"name": str(path)}], loss_on="completion", system_prompt="Be exact.")
    data = prepare_sft_data(recipe, tok)
    (t,) = data.train
    assert tok.decode(t.input_ids) == (
        "<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\nTwo plus two?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    assert loss_segments(tok, t) == ["4<|im_end|>\n"]


@pytest.mark.parametrize("loss_on", ["assistant", "last_assistant", "completion", "all"])
def test_plain_text_trains_every_token_and_ends_with_eos(tok, loss_on):
    text = "The quick brown fox."
    t = tokenize_sft(SFTExample(text=text, kind="text"), tok, loss_on, 10_000)
    assert t.input_ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(t.input_ids) == t.full_length == len(text) + 1  # one token per byte, plus EOS
    assert t.labels == t.input_ids
    assert tok.decode(t.input_ids) == text + "<|im_end|>"
    # a text that already ends with EOS does not get a second one
    t2 = tokenize_sft(SFTExample(text=text + "<|im_end|>", kind="text"), tok, loss_on, 10_000)
    assert t2.input_ids == t.input_ids


def test_truncation_cuts_sequences_and_drops_rows_without_loss(tmp_path, tok):
    rows = [
        {"prompt": "hi", "answer": "yo"},  # 25 tokens: kept whole
        {"prompt": "x" * 20, "answer": "zz"},  # 43 tokens; the answer starts at token 39 > 30: no loss left
        {"prompt": "y" * 5, "answer": "abcdefghij"},  # 36 tokens; the answer starts at token 24: 6 loss tokens left
    ]
    assert [chatml_len(r["prompt"], r["answer"]) for r in rows] == [25, 43, 36]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    recipe = make_recipe(tmp_path, [{"name": str(path)}], ["data.max_length=30"])
    assert recipe.data.max_length == 30
    data = prepare_sft_data(recipe, tok)

    assert [len(t.input_ids) for t in data.train] == [25, 30]
    assert [t.full_length for t in data.train] == [25, 36]
    assert all(len(t.labels) == len(t.input_ids) for t in data.train)
    assert loss_segments(tok, data.train[0]) == ["yo<|im_end|>\n"]
    assert loss_segments(tok, data.train[1]) == ["abcdef"]

    s = data.train_stats
    assert (s.count, s.min, s.max, s.truncated, s.dropped) == (3, 25, 43, 2, 1)
    assert s.loss_tokens == (2 + 2) + 6
    assert s.mean == pytest.approx((25 + 43 + 36) / 3)
    assert s.median == 36
    assert data.eval == [] and data.eval_stats is None
    assert "1 dropped" in s.line(30) and "2 longer than data.max_length=30" in s.line(30)
    # counted for the run (said as a note at the start, logged at step 0): 2 rows, 13 + 6 tokens dropped
    assert data.truncations.metrics() == {"truncated_rows": 2.0, "truncated_row_tokens": 19.0}
    assert "2 of 3 examples (train and eval) longer than data.max_length=30 tokens were cut from the right (19 " \
           "tokens dropped; logged as truncated_rows); raise data.max_length" in data.notes[-1]


def test_every_row_losing_its_loss_is_an_error(tmp_path, tok):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "x" * 40, "answer": "a"}])
    problems = data_error(prepare_sft_data, make_recipe(tmp_path, [{"name": str(path)}], ["data.max_length=20"]), tok)
    assert len(problems) == 1 and "data.max_length=20" in problems[0]


# ---------------------------------------------------------------------------------------------------------------------
# 4. other chat templates


def test_llama3_style_template_masks(llama_tok):
    tok = llama_tok
    expected_full = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye now<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nGoodbye.<|eot_id|>"
    )
    full, _ = render_with_loss_spans(CONVO, tok, "assistant")
    assert full == expected_full
    ex = SFTExample(messages=CONVO)

    t = tokenize_sft(ex, tok, "assistant", 10_000)
    assert tok.decode(t.input_ids) == expected_full
    # the specials are single tokens (so the mask boundaries are token boundaries)
    assert len(t.input_ids) == n_tokens(expected_full, LLAMA3_SPECIALS)
    assert loss_segments(tok, t) == ["Hello!<|eot_id|>", "Goodbye.<|eot_id|>"]

    for loss_on in ("last_assistant", "completion"):
        assert loss_segments(tok, tokenize_sft(ex, tok, loss_on, 10_000)) == ["Goodbye.<|eot_id|>"]
    t_all = tokenize_sft(ex, tok, "all", 10_000)
    assert t_all.labels == t_all.input_ids


def test_llama3_style_conversation_opening_with_the_assistant(llama_tok):
    msgs = [
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "5"},
    ]
    t = tokenize_sft(SFTExample(messages=msgs), llama_tok, "assistant", 10_000)
    # neither <|begin_of_text|> nor the assistant header is part of the reply
    assert loss_segments(llama_tok, t) == ["Hi!<|eot_id|>", "5<|eot_id|>"]


def test_template_that_renders_the_last_turn_differently_falls_back_to_search(think_tok):
    tok = think_tok
    full, spans = render_with_loss_spans(CONVO, tok, "assistant")
    assert full == CONVO_CHATML.replace("assistant\nGoodbye.", "assistant\n" + THINK + "Goodbye.")
    # the prefix property fails for the first reply only ...
    assert _prefix_span(tok, CONVO, 2, full) is None
    assert _prefix_span(tok, CONVO, 4, full) is not None
    covered = [full[s:e] for s, e in spans]
    # ... so it is located by its text (up to and with the EOS), the last one by the prefix property (with the newline)
    assert covered == ["Hello!<|im_end|>", THINK + "Goodbye.<|im_end|>\n"]
    t = tokenize_sft(SFTExample(messages=CONVO), tok, "assistant", 10_000)
    segs = loss_segments(tok, t)
    assert segs == covered
    for s in segs:
        assert "Hi there" not in s and "Bye now" not in s and "Be brief." not in s


def test_search_fallback_does_not_land_on_an_earlier_copy_of_the_reply(think_tok):
    # "yes" occurs in the system prompt and the user turn before the first reply; the mask must cover the reply
    msgs = chat("Answer yes", "yes", "Again?", "yes!", system="Say yes")
    t = tokenize_sft(SFTExample(messages=msgs), think_tok, "assistant", 10_000)
    segs = loss_segments(think_tok, t)
    assert segs == ["yes<|im_end|>", THINK + "yes!<|im_end|>\n"]
    first_loss = next(k for k, label in enumerate(t.labels) if label != IGNORE)
    assert think_tok.decode(t.input_ids[:first_loss]).endswith("Answer yes<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_drops_a_reply_is_a_clear_error():
    tok = _load_tiny_tokenizer()
    # earlier assistant turns are rendered without their content: no mask can be placed on them
    tok.chat_template = LAST_TURN_TEMPLATE.replace(
        "{{- m['content'] + '<|im_end|>\\n' -}}",
        "{%- if m['role'] != 'assistant' or loop.last -%}{{- m['content'] -}}{%- endif -%}{{- '<|im_end|>\\n' -}}",
    )
    problems = data_error(render_with_loss_spans, CONVO, tok, "assistant")
    assert "data.loss_on=all" in problems[0]
    # the last reply alone is still fine
    full, spans = render_with_loss_spans(CONVO, tok, "last_assistant")
    assert [full[s:e] for s, e in spans] == [THINK + "Goodbye.<|im_end|>\n"]


def test_tokenizer_without_chat_template():
    tok = _load_tiny_tokenizer()
    tok.chat_template = None
    problems = data_error(tokenize_sft, SFTExample(messages=CONVO), tok, "assistant", 100)
    assert "no chat template" in problems[0] and "text_column" in problems[0]
    # plain text still works
    t = tokenize_sft(SFTExample(text="abc", kind="text"), tok, "assistant", 100)
    assert t.labels == t.input_ids and len(t.input_ids) == 4


# ---------------------------------------------------------------------------------------------------------------------
# 5. prepare_sft_data


def test_system_prompt_inserted_once(tmp_path, tok):
    rows = [
        {"messages": chat("no system here", "a1")},
        {"messages": chat("has one", "a2", system="Own system.")},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    recipe = make_recipe(tmp_path, [{"name": str(path)}], system_prompt="Global system.")
    examples, _ = load_sft_examples(recipe)
    assert examples[0].messages == [{"role": "system", "content": "Global system."}, *rows[0]["messages"]]
    assert examples[1].messages == rows[1]["messages"]

    data = prepare_sft_data(recipe, tok)
    texts = [tok.decode(t.input_ids) for t in data.train]
    assert texts[0].startswith("<|im_start|>system\nGlobal system.<|im_end|>\n<|im_start|>user\nno system here")
    assert texts[0].count("<|im_start|>system") == 1
    assert texts[1].startswith("<|im_start|>system\nOwn system.<|im_end|>\n")
    assert texts[1].count("<|im_start|>system") == 1 and "Global system." not in texts[1]
    # the system prompt never carries loss
    assert [loss_segments(tok, t) for t in data.train] == [["a1<|im_end|>\n"], ["a2<|im_end|>\n"]]
    # and plain text rows are left alone
    text_path = write_jsonl(tmp_path / "t.jsonl", [{"text": "raw"}])
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(text_path)}], system_prompt="S"))
    assert (examples[0].text, examples[0].messages) == ("raw", None)


def _text_rows(tmp_path, n: int) -> Path:
    return write_jsonl(tmp_path / "t.jsonl", [{"text": f"row{i:02d}"} for i in range(n)])


def _texts(tok, items) -> list[str]:
    out = []
    for t in items:
        s = tok.decode(t.input_ids)
        assert s.endswith("<|im_end|>")
        out.append(s[: -len("<|im_end|>")])
    return out


def test_eval_split_ratio(tmp_path, tok):
    path = _text_rows(tmp_path, 20)
    every = [f"row{i:02d}" for i in range(20)]

    def split(seed):
        recipe = make_recipe(tmp_path, [{"name": str(path)}], ["data.eval_split_ratio=0.25", f"training.seed={seed}"])
        d = prepare_sft_data(recipe, tok)
        return _texts(tok, d.train), _texts(tok, d.eval), d

    train, evaluation, d = split(7)
    assert (len(train), len(evaluation)) == (15, 5)
    assert not set(train) & set(evaluation)
    assert sorted(train + evaluation) == every
    # both parts keep the file order
    assert train == sorted(train) and evaluation == sorted(evaluation)
    assert d.eval_stats is not None and d.eval_stats.count == 5 and d.train_stats.count == 15
    # deterministic for a seed, and the seed matters
    assert split(7)[:2] == (train, evaluation)
    others = {tuple(split(seed)[1]) for seed in (1, 2, 3)}
    assert any(o != tuple(evaluation) for o in others)
    # a small ratio still holds out one row
    recipe = make_recipe(tmp_path, [{"name": str(path)}], ["data.eval_split_ratio=0.01"])
    assert len(prepare_sft_data(recipe, tok).eval) == 1


def test_eval_split_ratio_that_leaves_nothing_to_train(tmp_path, tok):
    path = _text_rows(tmp_path, 2)
    recipe = make_recipe(tmp_path, [{"name": str(path)}], ["data.eval_split_ratio=0.9"])
    problems = data_error(prepare_sft_data, recipe, tok)
    assert problems[0].startswith("data.eval_split_ratio: ")


def test_eval_datasets_are_tokenised_separately(tmp_path, tok):
    train_path = _text_rows(tmp_path, 3)
    eval_path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "answer": "a"}])
    recipe = make_recipe(tmp_path, [{"name": str(train_path)}], eval_datasets=[{"name": str(eval_path)}])
    d = prepare_sft_data(recipe, tok)
    assert _texts(tok, d.train) == ["row00", "row01", "row02"]
    assert d.formats == {KEY0: "text", "data.eval_datasets[0]": "completion"}
    assert [loss_segments(tok, t) for t in d.eval] == [["a<|im_end|>\n"]]
    assert d.eval_stats.count == 1 and d.eval_stats.max == chatml_len("p", "a")


def test_shuffle_seed(tmp_path, tok):
    path = _text_rows(tmp_path, 12)
    every = [f"row{i:02d}" for i in range(12)]

    def order(*overrides):
        return _texts(tok, prepare_sft_data(make_recipe(tmp_path, [{"name": str(path)}], list(overrides)), tok).train)

    assert order() == every  # no shuffle_seed: file order
    a = order("data.shuffle_seed=3")
    assert sorted(a) == every and a != every
    assert order("data.shuffle_seed=3") == a
    assert order("data.shuffle_seed=4") != a
    expected = list(every)
    random.Random(3).shuffle(expected)
    assert a == expected
    # samples (the --dry-run preview) follow the training order
    d = prepare_sft_data(make_recipe(tmp_path, [{"name": str(path)}], ["data.shuffle_seed=3"]), tok)
    assert [s.text for s in d.samples] == a[:2]


def test_length_stats_of_a_hand_built_dataset(tmp_path, tok):
    texts = ["abcd", "x" * 9, "y" * 19, "z" * 29, "w" * 11]  # tokens: 5, 10, 20, 30, 12 (text + EOS)
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    d = prepare_sft_data(make_recipe(tmp_path, [{"name": str(path)}], ["data.max_length=12"]), tok)
    s = d.train_stats
    assert (s.count, s.min, s.max) == (5, 5, 30)
    assert s.truncated == 2  # 20 and 30; 12 == max_length is not truncated
    assert s.dropped == 0  # text rows always keep their loss
    assert s.mean == pytest.approx((5 + 10 + 20 + 30 + 12) / 5)
    assert s.median == 12
    assert s.loss_tokens == 5 + 10 + 12 + 12 + 12
    assert [len(t.input_ids) for t in d.train] == [5, 10, 12, 12, 12]
    assert [t.full_length for t in d.train] == [5, 10, 20, 30, 12]
    # a truncated text row keeps its first max_length tokens, without EOS
    assert tok.decode(d.train[2].input_ids) == "y" * 12


def test_numeric_answers_become_text(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n{"prompt": "Half of 3?", "answer": 1.5}\n')
    examples, _ = load_sft_examples(make_recipe(tmp_path, [{"name": str(path)}]))
    assert [e.messages[-1]["content"] for e in examples] == ["4", "1.5"]
