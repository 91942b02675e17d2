"""fai-rl-serve (the real CLI, started once on 127.0.0.1 with the built-in tiny model) driven by the real `openai`
client; then fai-rl-inference and fai-rl-eval running FAI-RL-layout recipes through it (the API path end to end) and
on the local engine, checked against each other."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

MODEL = "fai-rl/tiny"
ROWS = [("a teacher", "What is 2 + 3?"), ("a pirate", "What is 7 - 2?"), ("a cook", "Name a fruit.")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fai_rl.cli.serve", MODEL, "--port", str(port),
                             "--max-wait-ms", "50"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail("fai-rl-serve exited: " + proc.stdout.read())
            try:
                urllib.request.urlopen(url + "/models", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def _chat(client, text, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          max_tokens=12, temperature=0, **kw)


def test_openai_client_gets_what_the_local_engine_generates(client):
    from fai_rl.evaluation.samplers import open_sampler, render_chat
    from fai_rl.models.source import resolve_model_source

    assert [m.id for m in client.models.list().data] == [MODEL]
    chat = _chat(client, "What is 2 + 3?")
    sampler = open_sampler(resolve_model_source(MODEL))
    local = sampler.generate([render_chat(sampler.tokenizer, [{"role": "user", "content": "What is 2 + 3?"}])],
                             max_new_tokens=12)[0][0]
    assert chat.choices[0].message.content == local.text  # greedy: the same tokens as fai_rl.sampling
    assert chat.usage.completion_tokens == len(local.tokens)
    assert chat.choices[0].finish_reason == ("stop" if local.stopped else "length")
    text = client.completions.create(model=MODEL, prompt=["Hello", "What is"], max_tokens=5, temperature=0)
    assert len(text.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in text.choices)
    # streaming: the chunks put together are the whole reply; the last chunk carries the finish reason
    chunks = list(_chat(client, "What is 2 + 3?", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    sampled = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=3,
                                             max_tokens=6, temperature=1.0, top_p=0.9)
    assert len(sampled.choices) == 3 and sampled.usage.completion_tokens <= 18
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)


def test_concurrent_requests_share_one_generate_call(client):
    prompts = [f"What is {i} + 1?" for i in range(6)]
    alone = [_chat(client, p).choices[0].message.content for p in prompts]

    def raw(p):
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0)
        return r.parse().choices[0].message.content, int(r.headers["x-fai-rl-batched-requests"])

    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(raw, prompts))
    assert [t for t, _ in together] == alone  # batching (left padding) changes no greedy reply
    assert max(b for _, b in together) > 1, together


def _recipe(tmp: Path, section: str, body: str) -> Path:
    path = tmp / f"{section}.yaml"
    path.write_text(f"{section}:\n" + body)
    return path


def _data(tmp: Path) -> Path:
    path = tmp / "data.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["persona", "prompt"])
        w.writerows(ROWS)
        w.writerow(["x " * 1500, "a row longer than the model's context: the server refuses it"])
    return path


def test_fairl_inference_recipe_through_the_api_matches_local(server, client, tmp_path, capsys):
    from fai_rl.cli.inference import main

    data = _data(tmp_path)
    common = f"""\
  dataset_name: "{data}"
  dataset_split: ""
  dataset_columns: ["persona", "prompt"]
  response_column: "response"
  system_prompt: |
    You are a helpful AI assistant.
    Your persona: {{persona}}
    User: {{prompt}}
  temperature: 1.0
  top_p: 0.9
  max_new_tokens: 12
  do_sample: false
"""
    api = _recipe(tmp_path, "inference", f"""\
  api_endpoint: "{server}/chat/completions"   # FAI-RL gives the whole URL; the SDK gets its base
  api_key: "<YOUR_API_KEY>"
  model: "{MODEL}"
  output_file: "{tmp_path}/api.csv"
  api_max_retries: 1
""" + common)
    assert main(["--recipe", str(api)]) == 1  # the over-long row failed (400, no retry), the rest written
    out = capsys.readouterr().out
    assert "failed: fai-rl/tiny row 3: BadRequestError" in out and "maximum context length" in out
    with open(tmp_path / "api.csv", newline="") as f:
        api_rows = list(csv.DictReader(f))
    assert [(r["persona"], r["prompt"]) for r in api_rows] == ROWS
    prompts = [f"You are a helpful AI assistant.\nYour persona: {p}\nUser: {q}\n" for p, q in ROWS]
    assert [r["response"] for r in api_rows] == [_chat(client, p).choices[0].message.content for p in prompts]
    assert (tmp_path / "api.csv").read_text().startswith('"persona","prompt","response"\n')  # FAI-RL's QUOTE_ALL
    summary = json.loads((tmp_path / "api_summary.json").read_text())
    assert summary["failed_rows"] == {MODEL: [3]} and summary["successful_examples"] == 3

    # the same recipe on the local engine, two models (a checkpoint column), JSONL, the long row dropped from data
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:4]))
    local = _recipe(tmp_path, "local", f"""\
  model_paths: ["{MODEL}", "{MODEL}"]
  output_file: "{tmp_path}/local.jsonl"
""" + common)
    local.write_text(local.read_text().replace("local:", "inference:", 1))
    assert main(["--recipe", str(local)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in rows] == [MODEL] * 6
    # flat mode tokenises the text without a chat template (as FAI-RL): not the chat endpoint's prompt, so compare
    # with /v1/completions, which does the same
    plain = client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0)
    assert [r["response"] for r in rows[:3]] == [c.text for c in plain.choices]


def test_fairl_eval_recipe_through_the_api_scores_each_reply(server, tmp_path, capsys):
    from fai_rl.cli.eval import main
    from fai_rl.inference.scoring import score

    data = tmp_path / "mmlu.jsonl"
    items = [("2 + 2 = ?", ["3", "4", "5", "6"], 1), ("Capital of France?", ["Rome", "Paris", "Oslo", "Bern"], 1)]
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a, "subject": "x"}) + "\n"
                            for q, c, a in items))
    recipe = _recipe(tmp_path, "evaluation", f"""\
  api_endpoint: "{server}"
  api_key: null
  model: "{MODEL}"
  output_file: "{tmp_path}/out/mmlu.csv"
  dataset_name: "{data}"
  dataset_subset: "all"
  dataset_split: "test"
  dataset_columns: ["question", "choices", "answer"]
  ground_truth_column: "answer"
  system_prompt: |
    Question: {{question}}
    Choose the best option and respond only with the letter of your choice.
    {{choices}}
    Please respond **only in valid JSON format** with the following keys:
    {{{{
      "answer": "<the letter of the chosen option, e.g., A, B, C, D>"
    }}}}
  temperature: 0.0
  top_p: 0.9
  max_new_tokens: 8
  do_sample: false
""")
    assert main(["--recipe", str(recipe), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "scoring: mmlu" in dry and "A. 3\\nB. 4" in dry and "note: evaluation.task: null" in dry
    assert main(["--recipe", str(recipe)]) == 0
    with open(tmp_path / "out" / "mmlu.csv", newline="") as f:
        responses = [r["response"] for r in csv.DictReader(f)]
    with open(tmp_path / "out" / "mmlu-eval.csv", newline="") as f:
        detailed = list(csv.DictReader(f))
    metrics, rows = score("mmlu", responses, [a for *_, a in items])
    assert [r["prediction"] for r in detailed] == [r["prediction"] or "" for r in rows]
    assert [r["ground_truth"] for r in detailed] == ["B", "B"]
    summary = json.loads((tmp_path / "out" / "mmlu-eval-summary.json").read_text())
    assert summary["metrics"] == metrics and summary["task"] == "mmlu"


def test_an_rl_recipe_grades_completions_with_the_served_model_as_judge(server, client, write_recipe):
    """`rewards: [{function: llm_judge, kwargs: {base_url, model}}]` through the recipe loader: each completion's
    reward is the first number of the judge's greedy reply (the same reply the client gets), scaled to [0, 1]."""
    from test_rewards import problems, reward_recipe

    from fai_rl.config import load_recipe
    from fai_rl.rewards import build_rewards, check_rewards, score_rewards
    from fai_rl.rewards.judge import score_reply

    template = "Q: {prompt}\nA: {completion}\nReference: {answer}\nScore 0-10:"
    spec = {"function": "llm_judge", "kwargs": {"base_url": server, "model": MODEL, "template": template,
                                                "max_score": 10.0, "max_tokens": 6}}
    recipe = load_recipe(reward_recipe(write_recipe, spec), extra_rules=[check_rewards])
    (judge,) = build_rewards(recipe)
    prompts = ["What is 2 + 3?", "What is 7 - 2?", "Name a fruit."]
    completions = ["5", "4", "apple"]
    rows = [{"answer": "5"}, {"answer": "5"}, {"answer": "apple"}]
    _, scores = score_rewards([judge], prompts, completions, rows)
    replies = [client.chat.completions.create(
        model=MODEL, max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": template.format(prompt=p, completion=c, answer=r["answer"])}],
    ).choices[0].message.content for p, c, r in zip(prompts, completions, rows, strict=True)]
    assert len(replies) == 3 and scores["llm_judge"] == [score_reply(r, 10.0) for r in replies]  # the tiny model is
    # untrained (its replies hold no number: None); the parsing is pinned below, the wire path here and just after
    assert score_reply("Grade: 7/10", 10.0) == 0.7 and score_reply("12", 10.0) == 1.0 and score_reply("none", 10) is None
    from fai_rl.rewards import RewardError
    from fai_rl.rewards.judge import llm_judge

    with pytest.raises(RewardError, match=r"judge fai-rl/tiny at http://127.0.0.1:9/v1 failed after 1 attempts"):
        llm_judge(prompts[:1], completions[:1], base_url="http://127.0.0.1:9/v1", model=MODEL, retries=0, timeout=5)
    bad = reward_recipe(write_recipe, {"function": "llm_judge",
                                       "kwargs": {"base_url": "localhost:8000", "model": MODEL, "template": "{prompt}"}})
    found = problems(bad)
    assert any("rewards[0].kwargs.base_url" in p for p in found) and any(".template" in p for p in found)
