"""fai-rl-generate: prompts from arguments, a text file, JSONL or stdin; sampling options; errors without a traceback.

Generation from a trained run dir and from a LoRA adapter is checked on the runs of tests/test_sft_e2e.py.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from fai_rl.cli.generate import main

MODEL = "fai-rl/tiny-sft"


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_input_keeps_columns_samples_n_per_prompt_and_is_reproducible(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "id": 7}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "What is 9 - 4?"},
                                               {"role": "assistant", "content": "5"}], "id": 8}) + "\n")
    args = ["--model", MODEL, "--input", str(data), "--prompt-column", "question", "-n", "8", "--temperature", "1",
            "--max-new-tokens", "6", "--seed", "1"]
    out = tmp_path / "out.jsonl"
    assert main([*args, "--output", str(out)]) == 0
    rows = rows_of(out.read_text())
    assert [(r["id"], r["index"], r["sample"]) for r in rows] == [(7 + i, i, j) for i in range(2) for j in range(8)]
    assert rows[8]["prompt"] == "What is 9 - 4?"  # a conversation is answered at its last user turn
    assert len({r["completion"] for r in rows[:8]}) > 1  # sampled at temperature 1: not all the same
    assert all(r["finish_reason"] in ("stop", "length") and 1 <= r["num_tokens"] <= 6 for r in rows)
    capsys.readouterr()
    assert main(args) == 0  # stdout, same seed: the same samples
    assert [r["completion"] for r in rows_of(capsys.readouterr().out)] == [r["completion"] for r in rows]
    assert not list(tmp_path.glob(".*.partial"))


def test_stdin_text_lines_are_answered_greedily_by_default(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 1 + 1?\n\nWhat is 5 + 2?\n"))
    assert main(["--model", MODEL, "--max-new-tokens", "6"]) == 0  # no --input and stdin is not a terminal
    rows = rows_of(capsys.readouterr().out)
    assert [r["prompt"] for r in rows] == ["What is 1 + 1?", "What is 5 + 2?"]
    assert all(r["completion"].isdigit() for r in rows)


@pytest.mark.parametrize("args,message", [
    (["--model", "runs/no-such-run", "hi"], "--model: 'runs/no-such-run' does not exist"),
    (["--model", "tinker://run/sampler_weights/x", "hi"], "also name its base model (--base-model NAME)"),
    (["--model", MODEL, "-n", "4", "hi"], "--num-samples 4 at --temperature 0 (greedy) gives identical samples"),
    (["--model", MODEL, "--input", "no-such.jsonl"], "--input: no such file: no-such.jsonl"),
    (["--model", MODEL, "--input", "BAD"], "BAD.jsonl:2: no non-empty 'prompt' text"),
])
def test_bad_arguments_exit_2_with_one_message(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "BAD.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    args = [a.replace("BAD", str(tmp_path / "BAD.jsonl")) if a == "BAD" else a for a in args]
    message = message.replace("BAD.jsonl", str(tmp_path / "BAD.jsonl"))
    assert main([*args, "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "out.jsonl").exists()
