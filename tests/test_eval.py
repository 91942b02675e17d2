"""fai-rl-eval: the pass@k estimator against hand-worked numbers, the metrics, multiple choice on a handmade set, a
generate task with a reward metric and a baseline, and bad recipes that stop with one clear message and write nothing.

The end-to-end proof that evaluation tells a trained model from its start (the GRPO quickstart against
fai-rl/tiny-sft) runs on the quickstart's own output in tests/test_rl_e2e.py, so the quickstart trains once.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from fai_rl.cli.eval import main
from fai_rl.evaluation.metrics import choice_index, parse_letter, pass_at_k, score_generations


def test_pass_at_k_matches_hand_worked_numbers():
    # 1 - C(n-c, k) / C(n, k), worked by hand:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2)=3, C(5,2)=10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c/n
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 2, 3) == 1.0  # n-c < k: every draw of 3 holds a correct one
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    for n, c in [(16, 3), (8, 1), (5, 5)]:  # more draws never lower the chance
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert values == sorted(values)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_exact_and_numeric_match_use_the_reward_extractors():
    completions = ["42", " 42. ", "The answer is 42.", "#### 1,000", "\\boxed{3/4}", "41"]
    refs = ["42", "42", "42", "Natalia sold 1000 clips. #### 1000", "0.75", "42"]
    assert score_generations("exact_match", completions, refs, 1e-6) == [1, 1, 0, 0, 0, 0]
    assert score_generations("numeric", completions, refs, 1e-6) == [1, 1, 1, 1, 1, 0]


def test_choice_answers_and_generated_letters():
    choices = ["red", "green", "blue"]
    assert [choice_index(a, choices) for a in (1, "B", "b", "(B)", "green", "1", 7, "D", "purple")] == \
        [1, 1, 1, 1, 1, 1, None, None, None]
    assert parse_letter("The answer is C.", 4) == 2 and parse_letter("(B) green", 4) == 1
    assert parse_letter("I think E", 4) is None and parse_letter("no idea", 4) is None


def _write_eval_recipe(tmp_path, **evaluation) -> str:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"evaluation": evaluation}, sort_keys=False))
    return str(path)


def test_multiple_choice_picks_the_choice_the_model_finds_most_likely(tmp_path, capsys):
    # fai-rl/tiny-sft knows these sums; each distractor is far from the right answer (not one of its near misses),
    # so the right choice is the most likely by a wide margin (> 2 nats). The answer is given in every accepted form.
    rows = [
        {"question": "What is 2 + 3?", "choices": ["5", "9", "0"], "answer": 0},
        {"question": "What is 8 - 6?", "choices": ["7", "2", "9"], "answer": "B"},
        {"question": "What is 4 + 4?", "choices": ["1", "3", "8"], "answer": "8"},
        {"question": "What is 6 + 7?", "choices": ["13", "18", "2"], "answer": "a"},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    recipe = _write_eval_recipe(
        tmp_path, models=["fai-rl/tiny-sft"], output_dir=str(out),
        tasks=[{"name": "mc", "type": "multiple_choice",
                "dataset": {"name": str(data), "prompt_column": "question"}}],
    )
    assert main(["--recipe", recipe]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["mc"]["results"]["fai-rl/tiny-sft"]["accuracy"]["mean"] == 1.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["prediction"] for s in samples] == ["5", "2", "8", "13"]
    for s in samples:
        right = s["choices"].index(s["reference"])
        others = [lp for i, lp in enumerate(s["choice_logprobs"]) if i != right]
        assert s["choice_logprobs"][right] > max(others) + 2
    # the log-likelihood is the plain sum of the choice's token log-probs after the chat-templated prompt
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fai_rl.models.load import resolve_model_path

    path = resolve_model_path("fai-rl/tiny-sft")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 6 + 7?"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    answer = tok("13", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
    expected = sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer))
    assert samples[3]["choice_logprobs"][0] == pytest.approx(expected, abs=1e-3)
    assert "accuracy" in capsys.readouterr().out


def test_generate_task_with_a_reward_metric_pass_at_k_and_a_baseline(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = _write_eval_recipe(
        tmp_path, models=["fai-rl/tiny-sft"], baseline="fai-rl/tiny", output_dir=str(out), seed=3,
        tasks=[{"name": "digits", "dataset": {"name": "fai-rl/digits", "split": "test", "max_samples": 8},
                "metrics": ["exact_match", "numeric"], "num_samples": 4, "temperature": 1.0, "max_new_tokens": 6,
                "rewards": [{"function": "format", "kwargs": {"regex": "^\\d+$"}}]}],
    )
    assert main(["--recipe", recipe]) == 0
    results = json.loads((out / "results.json").read_text())
    task = results["tasks"]["digits"]
    assert task["pass_k"] == [1, 4] and task["num_examples"] == 8
    model, base = task["results"]["fai-rl/tiny-sft"], task["results"]["fai-rl/tiny"]
    assert set(model) == {"exact_match", "numeric", "reward/format"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 * 4 and {s["model"] for s in samples} == {"fai-rl/tiny-sft", "fai-rl/tiny"}
    # the numbers in results.json are the estimator applied to the per-sample scores in samples.jsonl
    mine = [s for s in samples if s["model"] == "fai-rl/tiny-sft"]
    counts = [sum(s["scores"]["exact_match"] for s in mine if s["index"] == i) for i in range(8)]
    assert model["exact_match"]["pass@1"] == pytest.approx(sum(counts) / 32)
    assert model["exact_match"]["pass@4"] == pytest.approx(sum(pass_at_k(4, int(c), 4) for c in counts) / 8)
    assert model["exact_match"]["pass@4"] >= model["exact_match"]["pass@1"] > base["exact_match"]["pass@1"]
    assert model["reward/format"]["mean"] > 0.9  # tiny-sft answers with digits only
    assert task["delta"]["fai-rl/tiny-sft"]["exact_match"]["mean"] == pytest.approx(
        model["exact_match"]["mean"] - base["exact_match"]["mean"])
    printed = capsys.readouterr().out
    assert "fai-rl/tiny (baseline)" in printed and "exact_match pass@4" in printed and "delta" in printed
    assert not list(out.glob(".*.partial"))


BAD = [
    (["evaluation.tasks[0].temprature=1.0"], "evaluation.tasks[0].temprature: unknown key; did you mean "
     "evaluation.tasks[0].temperature?"),
    (["evaluation.tasks[0].metrics=[exact]"], "evaluation.tasks[0].metrics[0]: 'exact' is not a generate metric; "
     "did you mean 'exact_match'?"),
    (["evaluation.tasks[0].dataset.answer_column=solution"], "evaluation.tasks[0].dataset.answer_column (now "
     "'solution')"),
    (["evaluation.models=[./runs/no-such-run]"], "evaluation.models[0]: './runs/no-such-run' does not exist"),
    (["evaluation.models=[tinker://run-1/sampler_weights/final]"], "evaluation.base_model: is null, but "
     "evaluation.models[0] is a Tinker path"),
    (["evaluation.tasks[0].num_samples=4"], "4 samples at temperature 0 (greedy) would all be the same answer"),
    (["evaluation.tasks[0].num_samples=4", "evaluation.tasks[0].temperature=1", "evaluation.tasks[0].pass_k=[8]"],
     "evaluation.tasks[0].pass_k[0]: 8 must be in 1..num_samples (4)"),
    (["evaluation.tasks[0].rewards=[{function: exact_mach}]"], "evaluation.tasks[0].rewards[0].function: "
     "'exact_mach' is not a built-in reward; did you mean 'exact_match'?"),
    (["evaluation.tasks[0].type=multiple_choice", "evaluation.tasks[0].metrics=[accuracy]"],
     "evaluation.tasks[0].choices_column (now 'choices')"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0][0].split("=")[0] for b in BAD])
def test_a_bad_eval_recipe_stops_with_one_clear_message_and_writes_nothing(tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    recipe = _write_eval_recipe(
        tmp_path, models=["fai-rl/tiny-sft"], output_dir=str(out),
        tasks=[{"name": "digits", "dataset": {"name": "fai-rl/digits", "split": "test"}}],
    )
    assert main(["--recipe", recipe, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fai-rl-eval: ") and message in err, err
    assert "Traceback" not in err and not out.exists()


def test_the_command_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fai_rl.cli.eval", "--recipe", str(ROOT / "recipes/eval/quickstart.yaml"),
         f"evaluation.models=[{tmp_path / 'missing'}]", "evaluation.tasks[1].metrics=[numerik]"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the recipe has 1 error" in proc.stderr and "did you mean 'numeric'?" in proc.stderr  # rules first
    proc = subprocess.run(
        [sys.executable, "-m", "fai_rl.cli.eval", "--recipe", str(ROOT / "recipes/eval/quickstart.yaml"),
         f"evaluation.models=[{tmp_path / 'missing'}]"], capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.tinker
def test_eval_and_generate_sample_tinker_sampler_weights(tinker_server, tmp_path, monkeypatch, capsys):
    from fai_rl.cli.generate import main as generate

    client = tinker_server.service_client()
    training = client.create_lora_training_client(base_model=tinker_server.base_model, rank=8).result(timeout=120)
    path = training.save_weights_for_sampler("eval-test").result(timeout=120).path  # a fresh LoRA: the base weights
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "What is 2 + 3?", "choices": ["5", "9", "0"], "answer": 0}) + "\n")
    out = tmp_path / "out"
    recipe = _write_eval_recipe(
        tmp_path, models=[path], base_model="fai-rl/tiny-sft", tinker_base_url=tinker_server.base_url,
        output_dir=str(out), request_timeout_s=120,
        tasks=[{"name": "digits", "dataset": {"name": "fai-rl/digits", "split": "test", "max_samples": 2},
                "num_samples": 4, "temperature": 1.0, "max_new_tokens": 4},  # few shapes: each costs a JAX compile
               {"name": "mc", "type": "multiple_choice", "dataset": {"name": str(mc), "prompt_column": "question"}}],
    )
    assert main(["--recipe", recipe]) == 0
    results = json.loads((out / "results.json").read_text())
    task = results["tasks"]["digits"]
    stats = task["results"][path]["exact_match"]
    assert 1 >= stats["pass@4"] >= stats["pass@1"] >= 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 9 and all(1 <= s["num_tokens"] <= 4 for s in samples if s["task"] == "digits")
    # multiple choice through the service's compute_logprobs: the base weights' log-likelihoods, as computed locally
    assert results["tasks"]["mc"]["results"][path]["accuracy"]["mean"] == 1.0
    (remote,) = [s["choice_logprobs"] for s in samples if s["task"] == "mc"]
    from fai_rl.evaluation.samplers import open_sampler, render_chat
    from fai_rl.models.source import resolve_model_source

    local = open_sampler(resolve_model_source("fai-rl/tiny-sft"))
    prompt = render_chat(local.tokenizer, [{"role": "user", "content": "What is 2 + 3?"}])
    choices = [local.tokenizer(c, add_special_tokens=False)["input_ids"] for c in ("5", "9", "0")]
    assert remote == pytest.approx(local.score_continuations(prompt, choices), abs=1e-3)
    capsys.readouterr()
    assert generate(["--model", path, "--base-model", "fai-rl/tiny-sft", "--tinker-base-url", tinker_server.base_url,
                     "-n", "4", "--temperature", "1", "--max-new-tokens", "4", "What is 2 + 3?"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["sample"] for row in lines] == [0, 1, 2, 3] and all(row["prompt"] == "What is 2 + 3?" for row in lines)
