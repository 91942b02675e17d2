"""GPU check of local SFT: full, LoRA and QLoRA on a Qwen3-0.6B-shaped model, through the real CLI on one GPU.

The GPU machines have no model hub, so the model is Qwen3-0.6B's shape (28 layers, hidden 1024) with random weights
from a fixed seed and the built-in tiny tokenizer; the data is the built-in arithmetic task. Each mode runs
`fai-rl-train --num-gpus 1` as a subprocess and must finish with a finite, falling held-out loss. Writes a Markdown
table (and the raw summaries) to --out.

    python scripts/gpu_sft_check.py --out /tmp/gpu-sft [--steps 60] [--modes full,lora,qlora]
    python scripts/gpu_sft_check.py --out /tmp/cpu-try --shape small --num-gpus 0 --modes full,lora --steps 6
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 4096,
    },
    # a few-MB shape to try the script itself on a CPU (--num-gpus 0)
    "small": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 1024},
}
MODES = {
    "full": ["model.use_lora=false", "training.learning_rate=1e-4"],
    "lora": ["model.use_lora=true", "model.lora_r=16", "model.lora_alpha=32", "training.learning_rate=1e-3"],
    "qlora": ["model.use_lora=true", "model.load_in_4bit=true", "model.lora_r=16", "model.lora_alpha=32",
              "training.learning_rate=1e-3", "training.optim=paged_adamw_8bit"],
}


def build_model(out: Path, shape: str) -> Path:
    """A Qwen3-0.6B-shaped model dir with seeded random weights and the tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fai_rl.models.builtin import materialize_builtin_model

    tiny = materialize_builtin_model("fai-rl/tiny")
    config = AutoConfig.from_pretrained(tiny)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    config.max_window_layers = config.num_hidden_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    target = out / f"{shape}-shape"
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / name, target / name)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.0f}M params at {target}", flush=True)
    return target


def run_mode(mode: str, model_dir: Path, out: Path, steps: int, gpus: int) -> dict:
    run_dir = out / f"run-{mode}"
    cmd = [
        sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(ROOT / "recipes/quickstart/sft.yaml"),
        "--num-gpus", str(gpus), f"model.base_model_name={model_dir}", f"training.output_dir={run_dir}",
        f"training.max_steps={steps}", "training.warmup_steps=5", "training.eval_steps=" + str(max(1, steps // 3)),
        "training.save_steps=100000", "training.logging_steps=10", "training.per_device_train_batch_size=32",
        *MODES[mode],
    ]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (out / f"{mode}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"mode": mode, "ok": False, "error": (proc.stdout + proc.stderr)[-3000:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = summary["metrics"]["eval_loss"]
    ok = math.isfinite(ev["last"]) and ev["last"] < ev["first"]
    return {"mode": mode, "ok": ok, "wall_s": round(time.time() - start, 1), **summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--modes", default="full,lora,qlora")
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--num-gpus", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out, args.shape)
    results = [run_mode(m, model_dir, args.out, args.steps, args.num_gpus) for m in args.modes.split(",")]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    import torch

    lines = [
        f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}; shape {args.shape}; "
        f"torch {torch.__version__}; {args.steps} steps; {time.strftime('%Y-%m-%d')}",
        "",
        "| mode | ok | eval_loss first → last | train time (s) | tokens/s | peak GPU mem (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "metrics" not in r:
            lines.append(f"| {r['mode']} | FAILED | | | | |")
            continue
        ev = r["metrics"]["eval_loss"]
        lines.append(
            f"| {r['mode']} | {'yes' if r['ok'] else 'NO'} | {ev['first']:.3f} → {ev['last']:.3f} | "
            f"{r['train_runtime_s']} | {r['tokens_per_s']} | {r.get('peak_gpu_memory_gib')} |"
        )
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    for r in results:
        if not r["ok"]:
            print(f"\n{r['mode']} failed:\n{r.get('error', '')}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
