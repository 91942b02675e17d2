"""FAI-RL's SFT data semantics (trainers/sft_trainer.py) and CPT (trainers/cpt_trainer.py), from FAI-RL-layout recipes.

Flat mode: data.system_prompt filled from each source's dataset_columns is one plain text, loss on every token. Split
mode: system/user/assistant templates make a chat, loss on the reply. CPT: text_column documents, EOS after each,
packed into data.max_length blocks. The `fai-rl/tiny` tokenizer is byte-level (an ASCII character is one token, no
BOS, EOS `<|im_end|>`), so expected tokens are written out by hand here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from fairl_format import fairl_recipe

from fai_rl.config.load import load_recipe
from fai_rl.data.prepare import load_sft_rows, prepare_cpt_data, prepare_data, prepare_sft_data
from fai_rl.data.tokenize import IGNORE
from fai_rl.errors import DataError

EOS = "<|im_end|>"
# FAI-RL's own local-file recipe (recipes/training/sft/llama3_3B_local_file.yaml): flat mode over prompt/response
LOCAL_FILE_TEMPLATE = '  system_prompt: |\n    {prompt}\n'
# literal braces ({{ }}) and two columns, one of which is null in a row
BRACES_TEMPLATE = '  system_prompt: |\n    Q: {prompt}\n    A: {{"answer": "{response}"}}\n'
SPLIT_TEMPLATES = ('  system_prompt: "Answer about {topic}."\n  user_prompt: "Q: {question}"\n'
                   '  assistant_prompt: "{reply}"\n')


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(resources.files("fai_rl.models").joinpath("tiny")))
    t.pad_token = t.pad_token or t.eos_token
    return t


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_of(tmp_path, algorithm: str, datasets: str, data_extra: str = "", overrides=(), **kw):
    path = tmp_path / "recipe.yaml"
    path.write_text(fairl_recipe(algorithm, tmp_path / "run", datasets, data_extra=data_extra, **kw))
    return load_recipe(path, list(overrides))


def source(path: Path, *lines: str) -> str:
    return "\n".join([f'- name: "{path}"', *(f"  {line}" for line in lines)]) + "\n"


def data_error(fn, *args) -> list[str]:
    with pytest.raises(DataError) as info:
        fn(*args)
    return info.value.problems


# ---------------------------------------------------------------------------------------------------------------------
# flat mode


def test_flat_template_is_fairl_text_with_literal_braces_and_a_null_as_none(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2", "response": "4", "extra": "x"},
                                              {"prompt": "7*1", "response": None, "extra": "y"}])
    recipe = recipe_of(tmp_path, "sft", source(path, 'dataset_columns: ["prompt", "response"]'), BRACES_TEMPLATE)
    loaded = load_sft_rows(recipe)
    assert loaded.formats == {"data.datasets[0]": "template"}
    assert [(e.kind, e.text, e.messages) for e in loaded.examples] == [
        ("template", 'Q: 2+2\nA: {"answer": "4"}\n', None),
        ("template", 'Q: 7*1\nA: {"answer": "None"}\n', None),
    ]
    assert any("1 of 2 rows have a null" in n and "'None'" in n for n in loaded.notes), loaded.notes
    # trained as plain text: every token carries loss, EOS appended
    data = prepare_sft_data(recipe, tok)
    first = data.train[0]
    assert tok.decode(first.input_ids) == 'Q: 2+2\nA: {"answer": "4"}\n' + EOS
    assert first.labels == first.input_ids and len(first.input_ids) == 26 + 1
    assert data.notes == loaded.notes


def test_a_dataset_column_the_source_lacks_is_an_error_naming_the_key_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}])
    recipe = recipe_of(tmp_path, "sft", source(path, 'dataset_columns: ["prompt", "respnse"]'), LOCAL_FILE_TEMPLATE)
    (problem,) = data_error(load_sft_rows, recipe)
    assert problem.startswith(f"{path}:1: data.datasets[0].dataset_columns lists 'respnse'"), problem
    assert "prompt, response" in problem


def test_rows_whose_rendered_text_is_empty_are_skipped_and_counted(tmp_path, tok):
    rows = [{"prompt": "keep me", "response": "r"}, {"prompt": "", "response": "r"},
            {"prompt": "   ", "response": "r"}, {"prompt": "and me", "response": "r"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    # FAI-RL's local-file recipe: "{prompt}\n" renders "\n" for an empty prompt, which FAI-RL filters out
    recipe = recipe_of(tmp_path, "sft", source(path, 'dataset_columns: ["prompt", "response"]'), LOCAL_FILE_TEMPLATE)
    loaded = load_sft_rows(recipe)
    assert [e.text for e in loaded.examples] == ["keep me\n", "and me\n"]
    assert loaded.notes == ["data.datasets[0]: 2 of 4 rows skipped: their rendered text is empty (FAI-RL skips "
                            "them too)."]
    # every row empty: nothing to train on is an error that still says why
    path.write_text(json.dumps({"prompt": "", "response": "r"}) + "\n")
    problems = data_error(prepare_sft_data, recipe, tok)
    assert "1 of 1 rows skipped" in problems[0] and "no row is left to train on" in problems[-1]


# ---------------------------------------------------------------------------------------------------------------------
# split mode


def test_split_mode_is_a_chat_with_loss_on_the_reply_only(tmp_path, tok):
    rows = [{"topic": "sums", "question": "1+1?", "reply": "2"}, {"topic": "t", "question": "q", "reply": " "}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = recipe_of(tmp_path, "sft", source(path, 'dataset_columns: ["topic", "question", "reply"]'),
                       SPLIT_TEMPLATES)
    loaded = load_sft_rows(recipe)
    assert loaded.formats == {"data.datasets[0]": "split"}
    assert [e.messages for e in loaded.examples] == [[
        {"role": "system", "content": "Answer about sums."},
        {"role": "user", "content": "Q: 1+1?"},
        {"role": "assistant", "content": "2"},
    ]]
    assert "1 of 2 rows skipped: their rendered user or assistant text is empty" in loaded.notes[0]
    (t,) = prepare_sft_data(recipe, tok).train
    prompt = "<|im_start|>system\nAnswer about sums.<|im_end|>\n<|im_start|>user\nQ: 1+1?<|im_end|>\n" \
             "<|im_start|>assistant\n"
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert tok.decode(t.input_ids) == prompt + "2<|im_end|>\n"
    assert t.labels[:n_prompt] == [IGNORE] * n_prompt  # system, user and the assistant header carry no loss
    assert tok.decode([x for x in t.labels[n_prompt:] if x != IGNORE]) == "2<|im_end|>\n"
    assert t.labels[n_prompt] == t.input_ids[n_prompt]


# ---------------------------------------------------------------------------------------------------------------------
# FAI-RL's prompt/response files without templates, dataset_columns alone, and dataset_num_proc


def test_a_prompt_response_jsonl_is_prompt_completion_data(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "response": "Hello", "id": 1}])
    expected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for lines in ((), ('dataset_columns: ["prompt", "response"]',)):  # dataset_columns alone only keeps columns
        loaded = load_sft_rows(recipe_of(tmp_path, "sft", source(path, *lines)))
        assert loaded.formats == {"data.datasets[0]": "completion"}
        assert [e.messages for e in loaded.examples] == [expected]
    # an answer_column the recipe names is read as named, never swapped for 'response'
    problems = data_error(load_sft_rows, recipe_of(tmp_path, "sft", source(path, 'answer_column: "reply"')))
    assert "answer_column" in problems[0] and "'reply'" in problems[0]


def test_dataset_num_proc_2_tokenises_exactly_as_1(tmp_path, tok):
    rows = [{"topic": f"t{i}", "question": f"what is {i}?" * (i % 3 + 1), "reply": str(i * 7)} for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    datasets = source(path, 'dataset_columns: ["topic", "question", "reply"]')

    def tokens(extra: str, n: int, algorithm: str = "sft"):
        recipe = recipe_of(tmp_path, algorithm, datasets, extra, [f"data.dataset_num_proc={n}"], max_length=128,
                           max_prompt_length=64)
        d = prepare_data(recipe, tok)
        return [(t.input_ids, t.labels, t.full_length) for t in d.train], d.train_stats

    for extra in (SPLIT_TEMPLATES, '  system_prompt: "{topic}: {question} -> {reply}"\n'):
        one, stats_one = tokens(extra, 1)
        assert tokens(extra, 2) == (one, stats_one) and len(one) == 12
    cpt = tmp_path / "cpt.jsonl"
    write_jsonl(cpt, [{"text": f"document {i} " * (i + 1)} for i in range(12)])
    datasets = source(cpt, 'text_column: "text"')
    assert tokens("", 2, "cpt") == tokens("", 1, "cpt")


# ---------------------------------------------------------------------------------------------------------------------
# CPT


def test_cpt_packs_documents_into_max_length_blocks_with_loss_on_every_token(tmp_path, tok):
    docs = [f"doc{i}:" + "x" * 11 for i in range(6)]  # 16 characters each, 17 tokens with the EOS
    path = write_jsonl(tmp_path / "c.jsonl", [*({"text": d} for d in docs), {"text": ""}, {"body": "no text"}])
    recipe = recipe_of(tmp_path, "cpt", source(path, 'text_column: "text"'), max_length=16, max_prompt_length=8)
    d = prepare_cpt_data(recipe, tok)
    stream = tok("".join(doc + EOS for doc in docs), add_special_tokens=False)["input_ids"]
    assert len(stream) == 6 * 17 == 102  # 6 full blocks of 16, then a tail of 6 (< 8): dropped
    assert [len(b.input_ids) for b in d.train] == [16] * 6
    assert [x for b in d.train for x in b.input_ids] == stream[:96]
    assert all(b.labels == b.input_ids for b in d.train)
    assert d.packed and d.formats == {"data.datasets[0]": "cpt"} and d.train_stats.loss_tokens == 96
    assert "2 of 8 rows skipped" in d.notes[0]
    assert "6 documents, 102 tokens" in d.notes[1] and "last 6 tokens (under half a block) dropped" in d.notes[1]
    # the last block is kept when it holds at least half of max_length, or is the only one

    def block_lengths(max_length: int) -> list[int]:
        r = recipe_of(tmp_path, "cpt", source(path, 'text_column: "text"'), max_length=max_length, max_prompt_length=8)
        return [len(b.input_ids) for b in prepare_cpt_data(r, tok).train]

    assert block_lengths(12) == [12] * 8 + [6]  # 102 = 8 * 12 + 6, and 6 >= 12 / 2
    assert block_lengths(200) == [102]


def test_cpt_without_its_text_column_is_an_error_naming_the_key_and_line(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": "some text"}])
    recipe = recipe_of(tmp_path, "cpt", source(path, 'text_column: "text"'))
    (problem,) = data_error(prepare_cpt_data, recipe, tok)
    assert problem.startswith(f"{path}:1: data.datasets[0].text_column is 'text'") and "body" in problem, problem


def test_cpt_dispatches_to_the_sft_modules_on_both_backends(tmp_path):
    from fai_rl.backends import algorithm_module, check_dispatch

    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "a document"}])
    for backend, module in (("local", "fai_rl.backends.local.sft"), ("tinker", "fai_rl.backends.tinker.sft")):
        recipe = recipe_of(tmp_path, "cpt", source(path, 'text_column: "text"'), overrides=[
            f"training.backend={backend}"])
        assert check_dispatch(recipe) == []
        assert algorithm_module(recipe).__name__ == module


def test_dry_run_names_each_mode_and_shows_the_filled_template(tmp_path):
    from fai_rl.backends.local import sft

    flat = write_jsonl(tmp_path / "flat.jsonl", [{"prompt": "2+2", "response": None}])
    cpt = write_jsonl(tmp_path / "cpt.jsonl", [{"text": "raw text"}, {"text": ""}])
    recipe = recipe_of(tmp_path, "sft", source(flat, 'dataset_columns: ["prompt", "response"]'), BRACES_TEMPLATE)
    text = sft.describe(recipe, sft.prepare(recipe, None))
    assert "data.datasets[0] = template: FAI-RL flat template" in text
    assert "note: data.datasets[0]: 1 of 1 rows have a null" in text
    assert 'example 1 (template; 30 tokens, 30 carry loss)\n[[Q: 2+2\\nA: {"answer": "None"}\\n<|im_end|>]]' in text
    recipe = recipe_of(tmp_path, "cpt", source(cpt, 'text_column: "text"'), max_length=6, max_prompt_length=4)
    text = sft.describe(recipe, sft.prepare(recipe, None))
    assert "data.datasets[0] = cpt: continued pre-training" in text and "1 of 2 rows skipped" in text
    # "raw text" + EOS is 9 tokens: a block of 6 and a last one of 3 (half a block: kept)
    assert "train: 2 blocks;" in text and "--- block 1 (cpt; 6 tokens, all carry loss)\n[[raw te]]" in text
    assert "--- block 2 (cpt; 3 tokens, all carry loss)\n[[xt<|im_end|>]]" in text


# ---------------------------------------------------------------------------------------------------------------------
# short CPU training runs from FAI-RL-layout recipes: the loss falls


# FAI-RL's template asks for bf16, gradient checkpointing and 100 warmup steps; a 15-step CPU run wants none of them
CPU_RUN = ("training.bf16=false", "training.gradient_checkpointing=false", "training.warmup_steps=0",
           "training.logging_steps=1")


def train_losses(tmp_path, algorithm: str, datasets: str, data_extra: str = "") -> list[float]:
    from fai_rl.cli.train import main

    out = tmp_path / "run"
    path = tmp_path / "train.yaml"
    path.write_text(fairl_recipe(algorithm, out, datasets, data_extra=data_extra, max_length=64, max_prompt_length=32,
                                 batch=4, accumulation=1, learning_rate="3.0e-3", max_steps=15, lora=False))
    assert main(["--recipe", str(path), *CPU_RUN]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (out / "final" / "config.json").exists()
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_flat_template_sft_run_learns(tmp_path, capsys):
    rows = [{"prompt": f"What is {i} + {i}?", "response": str(2 * i)} for i in range(20)]
    rows[3] = {"prompt": "", "response": ""}  # renders " ": skipped, and the run says so
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    losses = train_losses(tmp_path, "sft", source(path, 'dataset_columns: ["prompt", "response"]'),
                          '  system_prompt: "{prompt} {response}"\n')
    assert len(losses) == 15 and sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert "data: data.datasets[0]: 1 of 20 rows skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_cpt_run_learns(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": f"The number {i} doubled is {2 * i}."} for i in range(20)])
    losses = train_losses(tmp_path, "cpt", source(path, 'text_column: "text"'))
    assert len(losses) == 15 and sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert "data: cpt train: 20 documents" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.tinker
def test_cpt_run_on_the_tinker_backend_learns(tmp_path, tinker_server, monkeypatch):
    from fai_rl.cli.train import main

    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": f"The number {i} doubled is {2 * i}."} for i in range(20)])
    out = tmp_path / "run"
    recipe = tmp_path / "train.yaml"
    recipe.write_text(fairl_recipe("cpt", out, source(path, 'text_column: "text"'), model="fai-rl/tiny-sft",
                                   max_length=64, max_prompt_length=32, batch=4, accumulation=1,
                                   learning_rate="3.0e-3", max_steps=10))
    assert main(["--recipe", str(recipe), "training.backend=tinker", f"tinker.base_url={tinker_server.base_url}",
                 "tinker.lora_rank=8", "training.warmup_steps=0", "training.logging_steps=1"]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
