"""Local SFT end to end on the built-in tiny model: it learns, and every run leaves the same artefacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, kill_after_checkpoint, tiny_recipe
from wandb_records import history

from fai_rl.cli.generate import main as generate
from fai_rl.cli.train import main

pytestmark = pytest.mark.slow


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def answer(model, tokenizer, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_quickstart_learns_and_leaves_every_artefact(tmp_path):
    out = tmp_path / "quickstart"
    code = main(["--recipe", str(ROOT / "recipes/quickstart/sft.yaml"), f"training.output_dir={out}"])
    assert code == 0
    # held-out loss falls by at least half from the evaluation before training
    evals = [row["eval_loss"] for row in metrics(out) if "eval_loss" in row]
    assert len(evals) >= 3 and evals[-1] <= 0.5 * evals[0], evals
    # the recipe's rewards score greedy answers to the held-out prompts at every evaluation (0 before training)
    rewards = [row["eval_reward"] for row in metrics(out) if "eval_reward" in row]
    assert len(rewards) == len(evals) and rewards[0] == 0 and rewards[-1] > 0, rewards
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["eval_loss"]["first"] == evals[0] and summary["metrics"]["eval_loss"]["last"] == evals[-1]
    assert summary["global_step"] == 300 and summary["tokens_per_s"] > 0 and summary["train_runtime_s"] > 0
    rows = metrics(out)
    assert all("step" in row for row in rows) and any("loss" in row and "learning_rate" in row for row in rows)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["training"]["output_dir"] == str(out) and resolved["training"]["max_steps"] == 300
    # final/ is a plain HF model dir that reloads and answers in the trained format
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    replies = [answer(model, tokenizer, q) for q in ("What is 12 + 30?", "What is 40 - 15?", "What is 7 + 8?")]
    assert all(r.strip().isdigit() for r in replies), replies
    assert json.loads((out / "final" / "fai_rl.json").read_text())["kind"] == "full_model"
    # fai-rl-generate from the run dir: the same greedy replies, batched, through the chat template
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 12 + 30?\nWhat is 40 - 15?\nWhat is 7 + 8?\n")
    assert generate(["--model", str(out), "--input", str(prompts), "--output", str(tmp_path / "gen.jsonl"),
                     "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == replies and all(r["finish_reason"] == "stop" for r in rows)
    # the README's next step: fai-rl-export, then generate from the exported dir gives the same replies
    from fai_rl.cli.export import main as export

    assert export([str(out), "--out", str(tmp_path / "exported")]) == 0
    assert "eval_loss" in (tmp_path / "exported" / "README.md").read_text()  # the card carries the final metrics
    assert generate(["--model", str(tmp_path / "exported"), "--input", str(prompts), "--output",
                     str(tmp_path / "gen2.jsonl"), "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "gen2.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows] == replies


def test_lora_trains_an_adapter_that_reloads_on_its_base(write_recipe, tmp_path, capsys):
    out = tmp_path / "lora"
    recipe = tiny_recipe(out, model={"base_model_name": "fai-rl/tiny", "use_lora": True, "lora_r": 8,
                                     "lora_alpha": 16, "lora_dropout": 0.0})
    recipe["training"]["max_steps"] = 12
    recipe["training"]["learning_rate"] = 1e-2
    recipe["training"].update({"eval_steps": 4, "metric_for_best_model": "eval_loss"})  # save_steps 4 too
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    evals = [row["eval_loss"] for row in metrics(out) if "eval_loss" in row]
    assert evals[-1] < evals[0] * 0.9, evals
    # the best checkpoint by eval_loss (lower is better, inferred from the name) is kept and recorded
    summary = json.loads((out / "summary.json").read_text())
    best = {row["step"]: row["eval_loss"] for row in metrics(out) if "eval_loss" in row and row["step"] > 0}
    assert summary["best_metric"] == pytest.approx(min(best.values()))
    assert summary["best_checkpoint"].endswith(f"checkpoint-{min(best, key=best.get)}")
    assert (Path(summary["best_checkpoint"]) / "adapter_config.json").exists()
    final = out / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    note = json.loads((final / "fai_rl.json").read_text())
    assert note["kind"] == "peft_adapter" and note["base_model_name"] == "fai-rl/tiny"
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoPeftModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(note["base_model_path"])
    probe = torch.tensor([[256 + 1, 117, 115, 101, 114]])  # <|im_start|>user
    with torch.no_grad():
        assert not torch.allclose(tuned(probe).logits, base(probe).logits, atol=1e-4)  # the adapter changed the model
        tuned.disable_adapter_layers()
        assert torch.allclose(tuned(probe).logits, base(probe).logits, atol=1e-5)  # ... and nothing else
    # fai-rl-generate from the adapter dir: loaded on its base (named in fai_rl.json), the adapter's greedy replies
    tuned.enable_adapter_layers()
    tokenizer = AutoTokenizer.from_pretrained(final)
    expected = [answer(tuned, tokenizer, q) for q in ("What is 3 + 4?", "What is 20 - 5?")]
    capsys.readouterr()
    assert generate(["--model", str(final), "--max-new-tokens", "6", "What is 3 + 4?", "What is 20 - 5?"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["completion"] for r in rows] == expected
    # model.init_from: GRPO (full fine-tune, beta > 0) starts from this run's adapter merged into its base, with a
    # fresh optimizer at step 0; its KL reference is that start, so the first step's KL is 0 (against the base
    # model it would not be: the adapter changed the logits, above)
    rl = tmp_path / "rl"
    assert main(["--recipe", str(ROOT / "recipes/quickstart/grpo.yaml"), f"training.output_dir={rl}",
                 "model.base_model_name=fai-rl/tiny", f"model.init_from={out}", "training.beta=0.1",
                 "training.max_steps=2", "training.per_device_train_batch_size=8", "training.logging_steps=1",
                 "data.eval_datasets=[]", "training.bf16=false"]) == 0
    start = capsys.readouterr().out.split(f"model.init_from: weights from {out} (", 1)[1].split(")", 1)[0]
    merged = AutoModelForCausalLM.from_pretrained(start)  # the cached merge: the SFT model's weights
    with torch.no_grad():
        assert torch.allclose(merged(probe).logits, tuned(probe).logits, atol=1e-5)
    steps = [row for row in metrics(rl) if "kl" in row]
    assert steps[0]["step"] == 1 and steps[0]["kl"] < 1e-6, steps
    assert json.loads((rl / "summary.json").read_text())["global_step"] == 2
    assert json.loads((rl / "final" / "fai_rl.json").read_text())["init_from"] == str(out)


def test_qlora_trains_on_cpu(write_recipe, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    recipe = tiny_recipe(out, model={"base_model_name": "fai-rl/tiny", "use_lora": True, "load_in_4bit": True,
                                     "lora_r": 8, "lora_dropout": 0.0})
    recipe["training"]["learning_rate"] = 1e-2
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    evals = [row["eval_loss"] for row in metrics(out) if "eval_loss" in row]
    assert all(v == v for v in evals) and evals[-1] < evals[0], evals
    assert (out / "final" / "adapter_config.json").exists()


def test_wandb_without_key_writes_offline_run_files_into_output_dir(write_recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("FAI_RL_HOME", os.environ.get("FAI_RL_HOME") or str(Path.home() / ".cache" / "fai-rl"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    out = tmp_path / "wb"
    recipe = tiny_recipe(out, wandb={"enabled": True, "project": "fai-rl-tests", "name": "offline-check"})
    recipe["training"]["max_steps"] = 4
    recipe["data"]["max_length"] = 38  # the 169 rows of 39 tokens (train and eval) lose one: a step-0 row says so
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    cut = [row for row in metrics(out) if "truncated_rows" in row]
    assert cut == [{"step": 0, "truncated_rows": 169.0, "truncated_row_tokens": 169.0}], cut
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    records = run_file.read_bytes()  # the offline run log that `wandb sync` uploads
    assert b"fai-rl-tests" in records and b"offline-check" in records
    # the recipe config is in it, and every metrics.jsonl row under its own names and step (fai_rl.tracking; not
    # through wandb's console capture, which an earlier test in the same process can leave detached)
    assert str(out).encode() in records
    logged, expected = history(out), {}
    for row in metrics(out):  # rows at one step merge in wandb (HF logs train_runtime twice at the last step)
        expected.setdefault(row.pop("step"), {}).update(row)
    assert {"loss", "eval_loss"} <= set().union(*expected.values())
    for step, row in expected.items():
        assert {k: logged[step][k] for k in row} == pytest.approx(row, nan_ok=True), step


def test_resume_after_an_interrupted_run_continues_from_the_saved_step(write_recipe, tmp_path):
    out = tmp_path / "resume"
    recipe = tiny_recipe(out)
    recipe["training"].update({"max_steps": 400, "save_steps": 3, "logging_steps": 1, "lr_scheduler_type": "constant"})
    path = write_recipe(recipe)
    kill_after_checkpoint(path, out / "checkpoint-6")
    assert not (out / "final").exists()
    saved = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                if (p / "trainer_state.json").exists() and (p / "scheduler.pt").exists())
    assert main(["--recipe", str(path), "--resume", "training.max_steps=" + str(saved + 4)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved and summary["global_step"] == saved + 4
    steps = [row["step"] for row in metrics(out) if "loss" in row]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # nothing logged twice after the resume
    assert steps[0] == 1 and steps[-1] == saved + 4 and set(range(1, saved + 5)) <= set(steps)
    state = json.loads((out / f"checkpoint-{saved + 4}" / "trainer_state.json").read_text())
    assert state["global_step"] == saved + 4
