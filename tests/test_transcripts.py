"""fai_rl/transcripts.py and fai_rl/tracking.py's feed: rollout transcripts a person can open (escaped), and every
metrics.jsonl row in the wandb run, read back from a real offline run's .wandb file (tests/wandb_records.py).

The end-to-end checks (a GRPO run on each backend writes rollouts/ and its wandb run holds metrics.jsonl) are in
tests/test_backend_parity.py::test_grpo_same_steps_rates_and_names; the Tinker driver's metrics maths in
tests/test_tinker_rl_metrics.py.
"""

from __future__ import annotations

import json

import pytest
from wandb_records import history

from fai_rl import transcripts
from fai_rl.artifacts import RunDir


def test_transcripts_are_due_at_step_one_and_every_n_steps_and_never_at_zero():
    assert [s for s in range(1, 13) if transcripts.due(s, 4)] == [1, 4, 8, 12]
    assert not any(transcripts.due(s, 0) for s in range(1, 13))


def test_prompts_group_in_order_of_first_appearance_and_only_the_first_few_are_kept():
    prompts = ["a", "a", "b", "b", "c", "a", "d", "e"]
    assert transcripts.first_groups(prompts, n=3) == [0, 0, 1, 1, 2, 0, -1, -1]
    chat = [[{"role": "user", "content": "2+2?"}], [{"role": "user", "content": "2+2?"}]]
    assert transcripts.first_groups(chat) == [0, 0]
    assert transcripts.as_text(chat[0]) == "user: 2+2?"


def test_a_transcript_is_jsonl_and_an_html_page_with_every_text_escaped(tmp_path, capsys):
    rows = [{"group": 0, "prompt": "What is 2 + 2?", "completion": "<script>alert('x')</script>", "reward": 1.0,
             "advantage": 0.5},
            {"group": 0, "prompt": "What is 2 + 2?", "completion": "5 & <b>six</b>", "reward": 0.0,
             "advantage": -0.5},
            {"group": 1, "prompt": "<|im_start|>user\n1+1<|im_end|>", "completion": "2", "reward": 1.0,
             "advantage": 0.0}]
    path = transcripts.write_transcript(tmp_path, 8, rows)
    assert path == tmp_path / "rollouts" / "step-8.jsonl"
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == [{"step": 8, **row} for row in rows]  # the raw text, unescaped, in the jsonl
    page = (tmp_path / "rollouts" / "step-8.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "5 &amp; &lt;b&gt;six&lt;/b&gt;" in page and "&lt;|im_start|&gt;user" in page
    assert page.count("<h2>") == 2 and "mean reward 0.5" in page and "-0.5" in page
    # the console (and so the run's log) shows a few samples as plain lines, each on one line
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == f"samples at step 8 (3 completions of 2 prompts in {tmp_path / 'rollouts' / 'step-8.html'})"
    assert shown[1:4] == ["  prompt 1: What is 2 + 2?", "    reward      1  adv +0.50  | <script>alert('x')</script>",
                          "    reward      0  adv -0.50  | 5 & <b>six</b>"]
    assert shown[4] == "  prompt 2: <|im_start|>user ⏎ 1+1<|im_end|>" and shown[5].endswith("| 2")


def test_every_metrics_row_and_the_rollouts_table_reach_an_offline_wandb_run(tmp_path, monkeypatch, capsys):
    import time

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    if wandb.run is not None:  # a run another test in this worker left open would receive the rows
        wandb.run.finish()
    run_dir = RunDir(tmp_path)
    logged = {1: {"loss": 0.5, "time/train": 1.25}, 2: {"loss": 0.25, "kl_sample_train": 1e-4,
                                                        "rewards/exact_match/mean": float("nan")}}
    run = wandb.init(project="fai-rl-tests", dir=str(tmp_path), mode="offline")
    assert wandb.run is run
    try:
        run_dir.log_metrics(1, logged[1])
        transcripts.write_transcript(tmp_path, 2, [{"group": 0, "prompt": "p", "completion": "<script>",
                                                    "reward": 1.0, "advantage": 0.0}])
        run_dir.log_metrics(2, {**logged[2], "ignored": "text"})
    finally:
        run.finish()
    assert "not logged" not in capsys.readouterr().err
    steps = history(tmp_path)
    for _ in range(20):  # a loaded machine: the core may still be writing the transaction log
        if {1, 2} <= set(steps):
            break
        time.sleep(0.5)
        steps = history(tmp_path)
    for step, values in logged.items():
        for key, value in values.items():
            assert steps[step][key] == pytest.approx(value, nan_ok=True), (step, key)
    assert "ignored" not in steps[2]
    table = steps[2]["rollouts/_type"], steps[2]["rollouts/nrows"]
    assert table == ("table-file", 1)
    (files,) = tmp_path.glob("wandb/offline-run-*/files")
    table_file = files / steps[2]["rollouts/path"]
    assert json.loads(table_file.read_text())["data"][0][3] == "<script>"  # wandb's table holds the raw text
