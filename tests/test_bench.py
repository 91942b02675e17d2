"""scripts/bench.py cannot rot: both arms (plain TRL and the shipped recipe) run on the tiny shape for two steps.

No timings are asserted: the CPU numbers mean nothing. What is asserted is that every run finished, measured what the
table needs, and that the recipe path resolved the machine-dependent settings the way a CPU must (no Liger, no
activation checkpointing, no compiled generation). Also here: the merged-LoRA sampling used by fast GRPO generation
changes neither the samples nor the frozen weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts/bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_trl_and_fai_rl_side_by_side_on_the_tiny_model(tmp_path):
    out = tmp_path / "bench"
    rc = _bench().main(["--out", str(out), "--shape", "tiny", "--seq", "32", "--steps", "2", "--warmup", "0",
                        "--arms", "sft_full,grpo", "--completion-tokens", "4", "--in-process", "--impls", "trl,fai"])
    assert rc == 0
    report = json.loads((out / "bench.json").read_text())
    runs = {r["name"]: r for r in report["results"]}
    assert set(runs) == {"sft_full:trl", "sft_full:fai", "grpo:trl", "grpo:fai"}
    for run in runs.values():
        assert "error" not in run, run
        assert run["steps_timed"] == 2 and run["median_step_s"] > 0
    assert runs["sft_full:trl"]["tokens_per_step"] == 8 * 32  # TRL's default batch of 8, every sequence full
    assert runs["sft_full:fai"]["tokens_per_step"] == 32 * 32  # the recipe's 16 x 2 accumulation
    assert runs["grpo:fai"]["gen_tokens_per_s"] > 0 and runs["grpo:fai"]["generate_s_per_step"] > 0
    fai = runs["sft_full:fai"]["settings"]
    assert (fai["use_liger_kernel"], fai["gradient_checkpointing"]) == (False, False)  # resolved for a CPU
    assert runs["grpo:fai"]["settings"]["fast_generation"] is False
    table = (out / "bench.md").read_text()
    assert "| sft_full | **fai-rl vs TRL defaults** |" in table and report["meta"]["gpu"].startswith("cpu")


def test_ragged_data_counts_real_tokens_against_tuned_trl(tmp_path):
    out = tmp_path / "bench"
    rc = _bench().main(["--out", str(out), "--shape", "tiny", "--seq", "256", "--steps", "2", "--warmup", "0",
                        "--arms", "sft_full", "--data", "ragged", "--impls", "trl_tuned,fai", "--in-process"])
    assert rc == 0
    runs = {r["name"]: r for r in json.loads((out / "bench.json").read_text())["results"]}
    assert set(runs) == {"sft_full:trl_tuned", "sft_full:fai"}
    rows = [json.loads(line) for line in (out / "data-sft_full-256-ragged.jsonl").read_text().splitlines()]
    lengths = [sum(len(m["content"].split()) for m in r["messages"]) for r in rows]
    assert len(rows) == 256 and 32 <= min(lengths) < 150 and max(lengths) == 256 and len(set(lengths)) > 20
    for run in runs.values():
        assert "error" not in run and run["data"] == "ragged"
        # real tokens: the rows' mean length, not the padded --seq
        per_row = sum(lengths) / len(lengths)
        assert run["tokens_per_step"] == round(run["settings"]["sequences_per_step"] * per_row)
    assert "**fai-rl vs tuned TRL**" in (out / "bench.md").read_text()


def test_flops_per_token_matches_the_stated_formula():
    bench = _bench()
    # Qwen3-0.6B: 28 x (2*1024*2048 + 2*1024*1024 + 3*1024*3072) + 151936*1024 matmul weights
    n = 28 * (2 * 1024 * 2048 + 2 * 1024 * 1024 + 3 * 1024 * 3072) + 151936 * 1024
    assert bench.flops_per_token("qwen3-0.6b", 151936, 2048, frozen_base=False) == 6 * n + 6 * 28 * 2048 * 2048
    assert bench.flops_per_token("qwen3-0.6b", 151936, 2048, frozen_base=True) == 4 * n + 6 * 28 * 2048 * 2048


def test_merged_lora_sampling_keeps_samples_and_frozen_weights():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fai_rl.backends.local.grpo import sample_with_merged_lora
    from fai_rl.models.load import resolve_model_path

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny"), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking adapter, so merged and base models differ
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    ids = torch.randint(3, 200, (4, 10))
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "do_sample": False, "max_new_tokens": 12,
              "pad_token_id": 0}
    unmerged = peft_model.generate(**kwargs)
    with peft_model.disable_adapter():
        base_only = peft_model.generate(**kwargs)
    assert not torch.equal(unmerged, base_only)  # the adapter matters for these samples

    sample_with_merged_lora(peft_model)
    assert torch.equal(peft_model.generate(**kwargs), unmerged)
    assert torch.equal(peft_model.generate(**kwargs), unmerged)  # the persistent buffers are re-merged each call
    for name, p in peft_model.named_parameters():
        assert torch.equal(p, before[name]), name  # frozen weights back exactly, adapter untouched
    assert any(p.requires_grad for p in peft_model.parameters())


@pytest.mark.parametrize("recipe", ["sft/qwen3_0.6b_full.yaml", "sft/qwen3_0.6b_lora.yaml", "dpo/qwen3_0.6b_lora.yaml"])
def test_checkpointing_auto_is_off_where_the_run_fits_and_on_where_it_does_not(recipe):
    from fai_rl.config import load_recipe
    from fai_rl.models.load import estimated_gpu_bytes

    r = load_recipe(ROOT / "recipes" / recipe, ["model.base_model_name=fai-rl/tiny"])
    assert r.training.gradient_checkpointing is None  # auto in the shipped recipe
    tiny = estimated_gpu_bytes(r)
    assert 0 < tiny < 2 * 2**30  # a 0.8M-parameter model fits any GPU: no recompute
    r.training.per_device_train_batch_size *= 1000
    assert estimated_gpu_bytes(r) > 500 * tiny  # activations grow with the micro-batch: checkpointing turns on


def test_long_context_ladder_runs_both_arms_and_fits_memory_per_checkpointing_regime(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_long_context", ROOT / "scripts/bench_long_context.py")
    long = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(long)
    out = tmp_path / "long"
    assert long.main(["--out", str(out), "--shape", "tiny", "--ladder", "64", "--impls", "trl,fai",
                      "--in-process"]) == 0
    report = json.loads((out / "long_context.json").read_text())
    runs = {(r["impl"], r["seq"]): r for r in report["results"]}
    assert set(runs) == {("trl", 64), ("fai", 64)}
    for (impl, seq), run in runs.items():
        assert "error" not in run, run
        assert run["tokens_per_step"] == seq and run["settings"]["per_device_train_batch_size"] == 1
    # the fit: only the longest run's regime counts (fai-rl turns checkpointing on past a length)
    rows = [{"seq": 1000, "peak_gpu_mem_gib": 50.0, "settings": {"gradient_checkpointing": False}},
            {"seq": 2000, "peak_gpu_mem_gib": 10.0, "settings": {"gradient_checkpointing": True}},
            {"seq": 4000, "peak_gpu_mem_gib": 14.0, "settings": {"gradient_checkpointing": True}}]
    fit = long.fit(rows, total_gib=100.0)
    assert fit["checkpointing"] is True and fit["gib_at_0"] == 6.0
    assert fit["fits_up_to_tokens"] == int((100 - 2 - 6) / (4 / 2000))
