"""Multi-GPU check: SFT, DPO, GRPO, GSPO and PPO under DDP, ZeRO-2 and ZeRO-3 on 2 GPUs, plus 1-GPU baselines and
1-GPU QLoRA, each through the real CLI (`fai-rl-train --num-gpus N [training.deepspeed_config=zeroK]`).

The GPU machines have no model hub, so the model is a Qwen2.5-0.5B shape (24 layers, hidden 896, 14/2 heads, MLP 4864)
with seeded random weights and the built-in byte-level tokenizer (vocab 264, hence ~0.36B parameters). Tasks are
learnable from random weights: SFT on the built-in arithmetic task (held-out eval_loss must fall), DPO on preference
pairs written here (the sum of an addition preferred over as many random letters: a surface preference a random model
can pick up; held-out eval_loss must fall below log 2), and GRPO / GSPO / PPO on the built-in digit prompts with
`digit_share` below as the reward (the share of digits in a completion: about 4% for a random byte model; the mean
reward of the last quarter of the logged steps must beat the first quarter). Every run must end with finite losses.

Writes results.md (the table), results.json and one log per run into --out.

    python scripts/multi_gpu_check.py --out /tmp/mgpu                                  # 2 GPUs: everything
    python scripts/multi_gpu_check.py --out /tmp/mgpu --engines 1gpu,ddp,qlora         # a part of it
    python scripts/multi_gpu_check.py --out /tmp/try --cpu --shape small --steps 4     # try the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 4096},
    "small": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024},
}
ALGORITHMS = ("sft", "dpo", "grpo", "gspo", "ppo")
# engine -> (processes, extra overrides); "1gpu" is the baseline the 2-GPU tokens/s are divided by.
ENGINES = {
    "1gpu": (1, []),
    "ddp": (2, []),
    "zero2": (2, ["training.deepspeed_config=zero2"]),
    "zero3": (2, ["training.deepspeed_config=zero3"]),
    "qlora": (1, ["model.use_lora=true", "model.load_in_4bit=true", "model.lora_r=16", "model.lora_alpha=32",
                  "training.learning_rate=1e-3", "training.optim=paged_adamw_8bit"]),
}
RL = ("grpo", "gspo", "ppo")


def digit_share(completions, **kwargs) -> list[float]:
    """Reward: the share of a completion's characters that are digits (0 for an empty one)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / len(t) if t else 0.0 for t in texts]


def write_pairs(out: Path) -> tuple[Path, Path]:
    """Preference pairs {prompt, chosen, rejected}: 'What is a + b?' -> the sum, over as many random letters."""
    import random

    rng = random.Random(0)
    files = []
    for split, (lo, hi) in (("train", (0, 60)), ("test", (60, 80))):  # held-out first operands
        rows = []
        for a in range(lo, hi):
            for b in rng.sample(range(100), 16):
                answer = str(a + b)
                letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in answer)
                rows.append({"prompt": f"What is {a} + {b}?", "chosen": answer, "rejected": letters})
        path = out / f"pairs-{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(path)
    return files[0], files[1]


def recipe(algorithm: str, model_dir: Path, steps: int) -> dict:
    """The recipe of one algorithm; the same on every engine (per-device batch fixed, so 2 GPUs do twice the work)."""
    train = {"algorithm": algorithm, "max_steps": steps, "warmup_steps": 0, "lr_scheduler_type": "constant",
             "logging_steps": 1, "save_steps": 100000, "seed": 0}
    data = {"max_length": 64}
    rewards = []
    if algorithm == "sft":
        data.update(datasets=[{"name": "fai-rl/arithmetic", "split": "train"}],
                    eval_datasets=[{"name": "fai-rl/arithmetic", "split": "test", "max_samples": 128}],
                    loss_on="completion")
        train.update(learning_rate=1e-4, per_device_train_batch_size=32, per_device_eval_batch_size=64)
    elif algorithm == "dpo":
        train_pairs, test_pairs = write_pairs(model_dir.parent)
        data.update(datasets=[{"name": str(train_pairs)}], eval_datasets=[{"name": str(test_pairs), "max_samples": 64}])
        train.update(learning_rate=3e-5, per_device_train_batch_size=16, per_device_eval_batch_size=32)
    else:
        data.update(datasets=[{"name": "fai-rl/digits", "split": "train"}])
        rewards = [{"function": f"{HERE}:digit_share"}]
        train.update(learning_rate=1e-4, per_device_train_batch_size=16, max_completion_length=16, temperature=1.0)
        if algorithm == "ppo":
            train.update(num_ppo_epochs=2, kl_coef=0.05)
        else:
            train.update(num_generations=8)
    return {"model": {"base_model_name": str(model_dir)}, "data": data, "training": train, "rewards": rewards}


def build_model(out: Path, shape: str) -> Path:
    """A model dir of the given shape with seeded random weights and the built-in byte-level tokenizer."""
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
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, target / name)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params at {target}", flush=True)
    return target


def run(algorithm: str, engine: str, model_dir: Path, out: Path, steps: int, cpu: bool, gpu: str | None) -> dict:
    """One CLI run; its summary and whether it learned."""
    import yaml

    processes, extra = ENGINES[engine]
    name = f"{algorithm}-{engine}"
    run_dir = out / name
    recipe_path = out / f"{name}.yaml"
    tree = recipe(algorithm, model_dir, steps)
    tree["training"]["output_dir"] = str(run_dir)
    tree["training"]["overwrite_output_dir"] = True
    if cpu:
        tree["training"]["bf16"] = False
    recipe_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    where = ["--num-gpus", "0", "--num-processes", str(processes)] if cpu else ["--num-gpus", str(processes)]
    cmd = [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(recipe_path), *where, *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if gpu is not None:  # a 1-GPU run pinned to a chosen device, so two can run side by side
        env["CUDA_VISIBLE_DEVICES"] = gpu
    began = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = round(time.time() - began, 1)
    (out / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    row = {"algorithm": algorithm, "engine": engine, "processes": processes, "wall_s": wall, "ok": False}
    if proc.returncode != 0 or not (run_dir / "summary.json").exists():
        row["error"] = (proc.stdout + proc.stderr)[-2500:]
        return row
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row.update({k: summary.get(k) for k in ("train_runtime_s", "tokens_per_s", "peak_gpu_memory_gib", "global_step")})
    row.update(judge(algorithm, metrics))
    return row


def judge(algorithm: str, metrics: list[dict]) -> dict:
    """(what was measured, first, last, learned?) with every logged loss finite."""
    losses = [m[k] for m in metrics for k in ("loss", "eval_loss", "policy_loss", "value_loss") if k in m]
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    if algorithm in RL:
        rewards = [m["reward"] for m in metrics if "reward" in m]
        k = max(1, len(rewards) // 4)
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        return {"measure": "reward", "first": first, "last": last, "finite": finite, "ok": finite and last > first}
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    first, last = evals[0], evals[-1]
    return {"measure": "eval_loss", "first": first, "last": last, "finite": finite, "ok": finite and last < first}


def table(rows: list[dict], header: str) -> str:
    base = {r["algorithm"]: r.get("tokens_per_s") for r in rows if r["engine"] == "1gpu" and r["ok"]}
    lines = [header, "", "| algorithm | engine | GPUs | learns | measure: first → last | train s | tokens/s | "
             "2-GPU / 1-GPU tokens/s | peak GiB (rank 0) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "measure" not in r:
            lines.append(f"| {r['algorithm']} | {r['engine']} | {r['processes']} | FAILED | | | | | |")
            continue
        scale = ""
        if r["processes"] == 2 and base.get(r["algorithm"]) and r.get("tokens_per_s"):
            scale = f"{r['tokens_per_s'] / base[r['algorithm']]:.2f}×"
        lines.append(
            f"| {r['algorithm']} | {r['engine']} | {r['processes']} | {'yes' if r['ok'] else 'NO'} | "
            f"{r['measure']}: {r['first']:.3f} → {r['last']:.3f} | {r['train_runtime_s']} | {r['tokens_per_s']} | "
            f"{scale} | {r.get('peak_gpu_memory_gib')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--engines", default="1gpu,ddp,zero2,zero3,qlora")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (default: 30 SFT/DPO, 12 RL)")
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo) instead of GPUs: to try the script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.out, args.shape)
    algorithms, engines = args.algorithms.split(","), args.engines.split(",")
    rows = []
    singles = [(a, e) for e in engines if ENGINES[e][0] == 1 for a in algorithms if not (e == "qlora" and a != "sft")]
    multis = [(a, e) for e in engines if ENGINES[e][0] == 2 for a in algorithms]

    def steps(a: str) -> int:
        return args.steps or (12 if a in RL else 30)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "CPU"
    header = (f"{device} x{torch.cuda.device_count() if device != 'CPU' else 0}; shape {args.shape}; torch "
              f"{torch.__version__}; {time.strftime('%Y-%m-%d')}")

    def done(row: dict) -> None:  # results written after every run, so a run cut short still leaves its table
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("algorithm", "engine", "ok", "first", "last", "tokens_per_s",
                                                  "wall_s")}), flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        (args.out / "results.md").write_text(table(rows, header) + "\n")

    # 1-GPU runs two at a time, one on each GPU (their own devices; the 32-core host has CPU to spare).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1 if args.cpu else 2) as pool:
        futures = [pool.submit(run, a, e, model_dir, args.out, steps(a), args.cpu, None if args.cpu else str(i % 2))
                   for i, (a, e) in enumerate(singles)]
        for future in futures:
            done(future.result())
    for a, e in multis:
        done(run(a, e, model_dir, args.out, steps(a), args.cpu, None))
    text = table(rows, header)
    print(text)
    for r in rows:
        if not r["ok"]:
            print(f"\n{r['algorithm']}-{r['engine']} failed:\n{r.get('error', '')}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
