"""FAI-RL's inference and evaluation recipes (fai_rl.config.load_fairl_infer, fai_rl.inference.recipes) pass
--dry-run as FAI-RL writes them, with only the model and data made local; their mistakes are refused with the key,
file:line and fix, and a key in the recipe is never echoed. The runs themselves: tests/test_serve.py."""

from __future__ import annotations

import json

import pytest
from fairl_format import fairl_inference_recipe

from fai_rl.cli.eval import main as eval_main
from fai_rl.cli.inference import main as inference_main

PERSONA = """\
You are a helpful AI assistant. Answer the user's questions accurately and safely.
--------------------------------
Your persona: {persona}
User: {prompt}
--------------------------------
"""
MMLU = """\
Question: {question}
Choose the best option and respond only with the letter of your choice.
{choices}
Please respond **only in valid JSON format** with the following keys:
{{
  "answer": "<the letter of the chosen option, e.g., A, B, C, D>"
}}
Let's think step by step.
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fairl-data")
    (d / "chat.csv").write_text('persona,prompt\n"a teacher","What is 2 + 3?"\n"a cook","Name a fruit."\n')
    (d / "mmlu.jsonl").write_text("".join(json.dumps({"question": f"{i} + 1?", "choices": [str(i), str(i + 1)],
                                                      "answer": 1}) + "\n" for i in range(3)))
    (d / "gsm8k.jsonl").write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                                           for i in range(3)))
    return d


def _write(tmp_path, text, name="r.yaml"):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize("models,extra", [
    ('model_paths:\n  - "fai-rl/tiny"', ""),
    ('model_paths:\n  - "fai-rl/tiny"\n  - "fai-rl/tiny"', 'checkpoint_column: "checkpoint"'),
    ('api_endpoint: "https://api.example-host.dev/v1/chat/completions"\napi_key: "<YOUR_API_KEY>"\n'
     'model: "meta-llama/Llama-3.2-3B-Instruct"', ""),
    ('model_paths:\n  - "fai-rl/tiny"', 'user_prompt: "{prompt}"'),
], ids=["local", "multi_ckpt", "api", "chat"])
def test_fairl_inference_recipes_pass_dry_run(tmp_path, data, capsys, models, extra):
    recipe = fairl_inference_recipe("inference", models, tmp_path / "out.csv", data / "chat.csv",
                                    '["persona", "prompt"]', PERSONA, extra)
    assert inference_main(["--recipe", _write(tmp_path, recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe OK" in out and "Your persona: a teacher" in out and "dry run: nothing generated" in out
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("task", ["mmlu", "gsm8k"])
def test_fairl_eval_recipes_pass_dry_run(tmp_path, data, capsys, task):
    columns = '["question", "choices", "answer"]' if task == "mmlu" else '["question", "answer"]'
    prompt = MMLU if task == "mmlu" else 'Question: {question}\nReply only with valid JSON: {{"answer": "..."}}'
    recipe = fairl_inference_recipe("evaluation", 'model_paths:\n  - "fai-rl/tiny"\n  - "fai-rl/tiny"',
                                    tmp_path / "eval.csv", data / f"{task}.jsonl", columns, prompt,
                                    f'dataset_subset: "all"\nground_truth_column: "answer"\ntask: {task}',
                                    temperature=0.0, do_sample=False)
    assert eval_main(["--recipe", _write(tmp_path, recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"scoring: {task}" in out and "sampling: greedy" in out
    if task == "mmlu":
        assert "A. 0\\nB. 1" in out  # choices written as FAI-RL writes them for MMLU


def test_fairl_recipe_mistakes_are_named_and_a_key_is_never_echoed(tmp_path, data, capsys):
    key = "sk-proj-" + "Zq3" * 12
    models = f'api_endpoint: "https://api.openai.com/v1/chat/completions"\napi_key: "{key}"\nmodel: "gpt-4o-mini"'
    recipe = fairl_inference_recipe("inference", models, tmp_path / "o.csv", data / "chat.csv", '["persona", "prompt"]',
                                    PERSONA, 'image_columns: ["image"]\ntemprature: 0.5')
    path = _write(tmp_path, recipe)
    assert inference_main(["--recipe", path, "max_new_tokens=0"]) == 2
    err = capsys.readouterr().err
    assert key not in err and "Zq3" not in err
    assert "inference.api_key: holds what looks like a real API key (not shown)" in err
    assert f"{path}:" in err and "inference.temprature: unknown key" in err and "temperature" in err
    assert "inference.image_columns" in err and "VLM issue" in err
    assert "command line: inference.max_new_tokens: 0: must be at least 1" in err


def test_nohup_run_against_an_endpoint_that_is_down_lists_every_row(tmp_path, data, capsys):
    """--nohup detaches a real run; the SDK retries the refused connections with backoff, then each row is listed as
    failed, the output keeps FAI-RL's header with no rows, and the exit code is 1."""
    import socket
    import time

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    models = f'api_endpoint: "http://127.0.0.1:{port}/v1"\napi_key: null\nmodel: "fai-rl/tiny"'
    recipe = fairl_inference_recipe("inference", models, tmp_path / "o.csv", data / "chat.csv",
                                    '["persona", "prompt"]', PERSONA, "api_max_retries: 1\napi_timeout_s: 5")
    assert inference_main(["--recipe", _write(tmp_path, recipe), "--nohup"]) == 0
    started = capsys.readouterr().out
    assert "started in the background (pid" in started
    log = next((tmp_path / "logs").glob("inference-*.log"))
    for _ in range(240):
        if (tmp_path / "o_summary.json").exists():
            break
        time.sleep(0.25)
    summary = json.loads((tmp_path / "o_summary.json").read_text())
    assert summary["failed_rows"] == {"fai-rl/tiny": [0, 1]} and summary["successful_examples"] == 0
    assert (tmp_path / "o.csv").read_text() == '"persona","prompt","response"\n'
    for _ in range(40):
        if "failed" in log.read_text() and "0 rows in" in log.read_text():
            break
        time.sleep(0.25)
    text = log.read_text()
    assert "failed: fai-rl/tiny row 0: APIConnectionError" in text and "failed: fai-rl/tiny row 1" in text
