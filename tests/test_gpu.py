"""GPU tests (marker `gpu`; CI has no GPU, so they run through the device tool). Results are recorded in docs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from fai_rl.cli.launch import count_host_gpus

pytestmark = pytest.mark.gpu


def needs_gpus(n: int):
    return pytest.mark.skipif(count_host_gpus() < n, reason=f"needs {n} GPU(s)")


@needs_gpus(1)
def test_sft_full_lora_qlora_learn_on_one_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_sft_check.py"), "--out", str(tmp_path),
                           "--steps", "30"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["mode"] for r in results if r["ok"]] == ["full", "lora", "qlora"]


def quickstart(out, *extra):
    return run_cli("--recipe", str(ROOT / "recipes/quickstart/sft.yaml"), f"training.output_dir={out}",
                   "training.max_steps=60", "training.eval_steps=30", *extra)


@needs_gpus(2)
def test_num_gpus_2_relaunches_through_accelerate_and_learns(tmp_path):
    proc = quickstart(tmp_path / "ddp", "--num-gpus", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "accelerate.commands.launch --num_processes 2" in proc.stdout
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    ev = summary["metrics"]["eval_loss"]
    assert summary["processes"] == 2 and ev["last"] < 0.5 * ev["first"]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()
    assert not list((tmp_path / "ddp").glob(".final*"))


@needs_gpus(2)
def test_default_on_a_multi_gpu_host_pins_one_device(tmp_path):
    proc = quickstart(tmp_path / "one")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "pinned with CUDA_VISIBLE_DEVICES=0" in proc.stdout
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["processes"] == 1


FLAT_SFT_ROWS = [{"q": f"What is {a} + {b}?", "a": str(a + b)} for a in range(10) for b in range(10)]


@needs_gpus(1)
@pytest.mark.parametrize("precision", ["bf16_flash", "fp16", "qlora"])
def test_a_fai_rl_recipe_maps_its_precision_and_loader_keys_on_a_gpu(write_recipe, tmp_path, precision):
    """FAI-RL's keys reach the libraries on a real GPU: bf16 + use_flash_attention (flash-attention 2 where installed,
    else SDPA with a note), fp16 with its GradScaler, QLoRA with bnb_4bit_compute_dtype / double quant, pinned
    memory and loader workers; each run learns (FAI-RL's flat SFT template)."""
    from fairl_format import fairl_recipe

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FLAT_SFT_ROWS))
    extra = {
        "bf16_flash": ["model.use_flash_attention=true"],
        "fp16": ["training.bf16=false", "training.fp16=true", "model.torch_dtype=float32"],
        "qlora": ["model.load_in_4bit=true", "model.bnb_4bit_compute_dtype=bfloat16",
                  "model.bnb_4bit_use_double_quant=false", "model.lora_bias=none"],
    }[precision]
    out = tmp_path / precision
    text = fairl_recipe("sft", out, f'- name: "{data}"\n  dataset_columns: ["q", "a"]\n',
                        data_extra='  system_prompt: "Q: {q}\\nA: {a}"\n', max_length=64, max_prompt_length=32,
                        batch=16, accumulation=1, learning_rate="3.0e-3", max_steps=40)
    proc = run_cli("--recipe", str(write_recipe(text)), "--num-gpus", "1", "training.warmup_steps=0",
                   "training.dataloader_pin_memory=true", "training.dataloader_num_workers=2", *extra)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    loss = summary["metrics"]["loss"]
    assert loss["last"] < 0.75 * loss["first"], loss
    if precision == "bf16_flash":
        import importlib.util

        flash = importlib.util.find_spec("flash_attn") is not None
        assert flash or "using SDPA" in proc.stdout + proc.stderr
    line = (f"{precision}: loss {loss['first']:.3f} -> {loss['last']:.3f}, tokens/s {summary.get('tokens_per_s')}, "
            f"peak {summary.get('peak_gpu_memory_gib')} GiB")
    print("\n" + line)
    if os.environ.get("OUT"):  # the device tool brings $OUT back: the numbers for docs/gpu-checks.md
        with open(os.path.join(os.environ["OUT"], "fairl_gpu.txt"), "a") as fh:
            fh.write(line + "\n" + "".join(l + "\n" for l in (proc.stdout + proc.stderr).splitlines()
                                          if l.startswith(("note:", "performance:"))))


@needs_gpus(1)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_graph_decoder_replays_what_the_eager_step_and_hf_generate_decode(dtype):
    """The CUDA graph replays the eager step exactly (same tokens and log-probs); compiled and captured, fp32 greedy
    equals HF generate's tokens."""
    import torch
    from test_decode import PAD, PROMPTS, _batch, _hf_greedy, _model

    from fai_rl.decode import GraphDecoder, Knobs

    model = _model().to("cuda", getattr(torch, dtype))
    ids, mask = (t.cuda() for t in _batch(PROMPTS * 16))  # batch 64
    graphed, eager = GraphDecoder(model, graphs=True, compile=False), GraphDecoder(model, graphs=False)
    for _ in range(2):  # the second call replays the captured graph from its first step
        tokens_g, logprobs_g, lengths_g = graphed.generate(ids, mask, 40, Knobs(0.0), [7], PAD)
    assert graphed._step.graph is not None
    tokens_e, logprobs_e, lengths_e = eager.generate(ids, mask, 40, Knobs(0.0), [7], PAD)
    assert tokens_g.tolist() == tokens_e.tolist() and lengths_g.tolist() == lengths_e.tolist()
    assert torch.allclose(logprobs_g, logprobs_e, atol=1e-3)
    if dtype == "float32":
        compiled = GraphDecoder(model, graphs=True, compile=True)
        expected, _ = _hf_greedy(model, ids, mask, 40, stops=[7])
        for _ in range(2):
            tokens_c, _, _ = compiled.generate(ids, mask, 40, Knobs(0.0), [7], PAD)
            assert tokens_c.tolist() == expected.tolist()
        assert compiled.compile and compiled._step.graph is not None
    torch.manual_seed(0)
    sampled, _, lengths = graphed.generate(ids, mask, 40, Knobs(1.0, 0.9), [7], PAD)
    assert graphed._step.graph is not None
    assert len({tuple(r) for r in sampled.tolist()}) > 16  # 64 rows of 4 prompts: sampling differs between rows
