"""Multi-GPU check (issue 20's matrix): every algorithm under DDP, ZeRO-2 and ZeRO-3 on N GPUs with 1-GPU baselines,
ZeRO-1 and ZeRO-3-offload for SFT, LoRA and QLoRA for SFT and GRPO, and packed SFT under DDP against one GPU on the
same global batch; each run through the real CLI (`fai-rl-train --num-gpus N [training.deepspeed_config=zeroK]`).

Per run: learned (the headline metric moved the right way), real tokens/s (summary.json: non-padding tokens for the
trainers, prompts + completions for RL), scaling over the 1-GPU run of the same algorithm and adapter, and peak memory
per GPU (the highest nvidia-smi memory.used of each GPU the run used, less what it used before; on CPU: each rank's
peak RSS). Writes results.json, results.md (a table docs/multi-gpu.md can take) and one log per run into --out.

The GPU machines have no model hub, so the model is a Qwen2.5-0.5B shape (24 layers, hidden 896, 14/2 heads, MLP 4864)
with seeded random weights and the built-in byte-level tokenizer (vocab 264, hence ~0.36B parameters). Tasks are
learnable from random weights: SFT on the built-in arithmetic task and CPT on arithmetic sentences written here
(held-out eval_loss must fall), DPO on preference pairs written here (the sum of an addition preferred over as many
random letters; held-out eval_loss must fall), and GRPO / GSPO / RLOO / PPO on the built-in digit prompts with
`digit_share` below as the reward (the mean reward of the last quarter of the logged steps must beat the first).

One command per group, each planned to fit one device call (10 min) on 2 GPUs; `--list` prints a group's runs:

    python scripts/multi_gpu_check.py --out $OUT/base  --group base    # 1 GPU: 7 algorithms, LoRA/QLoRA SFT+GRPO
    python scripts/multi_gpu_check.py --out $OUT/ddp   --group ddp     # the same under DDP
    python scripts/multi_gpu_check.py --out $OUT/zero2 --group zero2
    python scripts/multi_gpu_check.py --out $OUT/zero3 --group zero3
    python scripts/multi_gpu_check.py --out $OUT/extra --group extra   # ZeRO-1, ZeRO-3-offload, packed parity, LoRA ZeRO-3
    python scripts/multi_gpu_check.py --merge $OUT/base $OUT/ddp ... --out /tmp/all  # one table from several groups
    python scripts/multi_gpu_check.py --out /tmp/try --cpu --shape small --steps 4 --group ddp \\
        --algorithms sft,grpo                                          # smoke on CPU processes (gloo), tiny shape
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
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
ALGORITHMS = ("sft", "cpt", "dpo", "ppo", "grpo", "gspo", "rloo")
RL = ("grpo", "gspo", "rloo", "ppo")
PARALLEL = {"1gpu": [], "ddp": [], **{z: [f"training.deepspeed_config={z}"]
                                      for z in ("zero1", "zero2", "zero3", "zero3_offload")}}
ADAPTERS = {
    "full": [],
    "lora": ["model.use_lora=true", "model.lora_r=16", "model.lora_alpha=32", "training.learning_rate=1e-3"],
    "qlora": ["model.use_lora=true", "model.load_in_4bit=true", "model.lora_r=16", "model.lora_alpha=32",
              "training.learning_rate=1e-3", "training.optim=paged_adamw_8bit"],
    "packed": ["training.padding_free=true"],  # parity: the 1-GPU run takes N x the per-device batch (same global)
}
ADAPTED = ("sft", "grpo")  # LoRA and QLoRA are checked on these two
GROUPS = {  # (algorithm, engine); an engine is "<parallel>" (full weights) or "<adapter>-<parallel>"
    "base": [(a, "1gpu") for a in ALGORITHMS] + [(a, f"{ad}-1gpu") for ad in ("lora", "qlora") for a in ADAPTED],
    "ddp": [(a, "ddp") for a in ALGORITHMS] + [(a, f"{ad}-ddp") for ad in ("lora", "qlora") for a in ADAPTED],
    "zero2": [(a, "zero2") for a in ALGORITHMS] + [(a, f"{ad}-zero2") for ad in ("lora", "qlora") for a in ADAPTED],
    "zero3": [(a, "zero3") for a in ALGORITHMS],  # the slowest engine: 7 runs fill a call
    "extra": [("sft", "zero1"), ("sft", "zero3_offload"), ("sft", "packed-1gpu"), ("sft", "packed-ddp"),
              *[(a, "lora-zero3") for a in ADAPTED]],
}


def split_engine(engine: str) -> tuple[str, str]:
    """'lora-zero2' -> ('lora', 'zero2'); 'ddp' -> ('full', 'ddp'); the old name 'qlora' is 'qlora-1gpu'."""
    adapter, _, parallel = engine.rpartition("-") if "-" in engine else ("full", "", engine)
    if engine in ADAPTERS:
        adapter, parallel = engine, "1gpu"
    if adapter not in ADAPTERS or parallel not in PARALLEL:
        raise SystemExit(f"--engines: unknown engine '{engine}'; use one of {sorted(PARALLEL)}, optionally prefixed "
                         f"with {sorted(a for a in ADAPTERS if a != 'full')} and '-'.")
    return adapter, parallel


def digit_share(completions, **kwargs) -> list[float]:
    """Reward: the share of a completion's characters that are digits (0 for an empty one)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / len(t) if t else 0.0 for t in texts]


def write_data(out: Path) -> dict[str, tuple[Path, Path]]:
    """DPO pairs {prompt, chosen, rejected} ('What is a + b?' -> the sum, over as many random letters) and CPT text
    {text: 'a + b = c.'}, train and test with held-out first operands."""
    import random

    rng = random.Random(0)
    files: dict[str, list[Path]] = {"dpo": [], "cpt": []}
    for split, (lo, hi) in (("train", (0, 60)), ("test", (60, 80))):
        pairs, text = [], []
        for a in range(lo, hi):
            for b in rng.sample(range(100), 16):
                answer = str(a + b)
                letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in answer)
                pairs.append({"prompt": f"What is {a} + {b}?", "chosen": answer, "rejected": letters})
                text.append({"text": f"{a} + {b} = {answer}. {b} + {a} = {answer}."})
        for kind, rows in (("dpo", pairs), ("cpt", text)):
            path = out / f"{kind}-{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            files[kind].append(path)
    return {k: (v[0], v[1]) for k, v in files.items()}


def recipe(algorithm: str, model_dir: Path, steps: int, data: dict, batch_scale: int = 1) -> dict:
    """The recipe of one algorithm; the same on every engine (per-device batch fixed, so N GPUs do N x the work)."""
    train = {"algorithm": algorithm, "max_steps": steps, "warmup_steps": 0, "lr_scheduler_type": "constant",
             "logging_steps": 1, "save_steps": 100000, "seed": 0}
    spec = {"max_length": 64}
    rewards = []
    if algorithm == "sft":
        spec.update(datasets=[{"name": "fai-rl/arithmetic", "split": "train"}],
                    eval_datasets=[{"name": "fai-rl/arithmetic", "split": "test", "max_samples": 128}],
                    loss_on="completion")
        train.update(learning_rate=1e-4, per_device_train_batch_size=32, per_device_eval_batch_size=64)
    elif algorithm in ("dpo", "cpt"):
        tr, te = data[algorithm]
        spec.update(datasets=[{"name": str(tr)}], eval_datasets=[{"name": str(te), "max_samples": 64}])
        lr, batch = (3e-5, 16) if algorithm == "dpo" else (1e-4, 32)
        train.update(learning_rate=lr, per_device_train_batch_size=batch, per_device_eval_batch_size=32)
    else:
        spec.update(datasets=[{"name": "fai-rl/digits", "split": "train"}])
        rewards = [{"function": f"{HERE}:digit_share"}]
        train.update(learning_rate=1e-4, per_device_train_batch_size=16, max_completion_length=16, temperature=1.0)
        train.update({"num_ppo_epochs": 2, "kl_coef": 0.05} if algorithm == "ppo" else {"num_generations": 8})
    train["per_device_train_batch_size"] *= batch_scale
    tree = {"model": {"base_model_name": str(model_dir)}, "data": spec, "training": train}
    return {**tree, "rewards": rewards} if rewards else tree


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


class PeakMemory:
    """Peak memory of each device a run uses, sampled every 0.5 s: nvidia-smi memory.used of the given GPUs less
    what they held before, or on CPU each rank's resident set (ranks told apart by their RANK variable)."""

    def __init__(self, proc: subprocess.Popen, gpus: list[int] | None):
        self.proc, self.gpus, self.peak = proc, gpus, {}
        self.before = self._gpu_used() if gpus is not None else {}
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _gpu_used(self) -> dict[int, float]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=False).stdout
        used = {int(i): float(m) / 1024 for i, m in (line.split(",") for line in out.strip().splitlines())}
        return {i: used[i] for i in self.gpus or [] if i in used}

    def _ranks_rss(self) -> dict[int, float]:
        import psutil

        found: dict[int, float] = {}
        try:
            top = psutil.Process(self.proc.pid)
            ranks = [p for p in top.children(recursive=True) if "RANK" in p.environ()]
            for p in ranks or [top]:  # a 1-process run trains in the process started here
                rank = int(p.environ().get("RANK", 0))
                found[rank] = max(found.get(rank, 0.0), p.memory_info().rss / 2**30)
        except psutil.Error:
            pass
        return found

    def _loop(self) -> None:
        while self.proc.poll() is None:
            now = ({i: v - self.before.get(i, 0.0) for i, v in self._gpu_used().items()} if self.gpus is not None
                   else self._ranks_rss())
            for i, v in now.items():
                self.peak[i] = max(self.peak.get(i, 0.0), v)
            time.sleep(0.5)

    def result(self) -> list[float]:
        self.thread.join(timeout=5)
        return [round(self.peak[i], 2) for i in sorted(self.peak)]


def run(algorithm: str, engine: str, model_dir: Path, out: Path, steps: int, data: dict, args, gpu: int | None) -> dict:
    """One CLI run: its summary, whether it learned, per-step losses (for the packed parity) and peak memory."""
    import yaml

    adapter, parallel = split_engine(engine)
    processes = 1 if parallel == "1gpu" else args.gpus
    name = f"{algorithm}-{engine}"
    run_dir = out / name
    recipe_path = out / f"{name}.yaml"
    scale = args.gpus if engine == "packed-1gpu" else 1  # the same global batch as packed-ddp
    tree = recipe(algorithm, model_dir, steps, data, batch_scale=scale)
    tree["training"].update(output_dir=str(run_dir), overwrite_output_dir=True)
    if args.cpu:
        tree["training"]["bf16"] = False
    recipe_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    where = ["--num-gpus", "0", "--num-processes", str(processes)] if args.cpu else ["--num-gpus", str(processes)]
    cmd = [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(recipe_path), *where, *ADAPTERS[adapter],
           *PARALLEL[parallel]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if gpu is not None:  # a 1-GPU run pinned to a chosen device, so several run side by side
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    began = time.time()
    with (out / f"{name}.log").open("w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        memory = PeakMemory(proc, None if args.cpu else ([gpu] if gpu is not None else list(range(processes))))
        proc.wait()
    row = {"algorithm": algorithm, "engine": engine, "processes": processes, "wall_s": round(time.time() - began, 1),
           "peak_gib_per_device": memory.result(), "ok": False}
    if proc.returncode != 0 or not (run_dir / "summary.json").exists():
        row["error"] = (out / f"{name}.log").read_text()[-2500:]
        return row
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row.update({k: summary.get(k) for k in ("train_runtime_s", "tokens_per_s", "peak_gpu_memory_gib", "global_step")})
    row["losses"] = [m["loss"] for m in metrics if "loss" in m]
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


def add_comparisons(rows: list[dict]) -> None:
    """Scaling over the 1-GPU run of the same algorithm and adapter; for packed-ddp, the largest step-loss difference
    from packed-1gpu (the same global batch), which must stay within 2% (`parity_ok`)."""
    one = {(r["algorithm"], split_engine(r["engine"])[0]): r for r in rows
           if split_engine(r["engine"])[1] == "1gpu" and r["ok"]}
    for r in rows:
        adapter, parallel = split_engine(r["engine"])
        base = one.get((r["algorithm"], adapter))
        if parallel != "1gpu" and base and base.get("tokens_per_s") and r.get("tokens_per_s"):
            r["scaling"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
        if adapter == "packed" and parallel != "1gpu" and base and r.get("losses"):
            diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], base["losses"], strict=False))
            r["parity_max_rel_diff"] = float(f"{diff:.2e}")
            r["parity_ok"] = diff < 0.02
            r["ok"] = r["ok"] and r["parity_ok"]


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| algorithm | engine | GPUs | learned | headline: first → last | train s | real tokens/s | "
             "scaling over 1 GPU | peak GiB per GPU | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = " / ".join(f"{v:g}" for v in r.get("peak_gib_per_device") or []) or "-"
        if "measure" not in r:
            lines.append(f"| {r['algorithm']} | {r['engine']} | {r['processes']} | FAILED | | | | | {peak} | "
                         "see the run's log |")
            continue
        scale = f"{r['scaling']:.2f}×" if r.get("scaling") else ""
        note = (f"step losses vs 1 GPU: max rel. diff {r['parity_max_rel_diff']:.1e}" if "parity_max_rel_diff" in r
                else "")
        lines.append(
            f"| {r['algorithm']} | {r['engine']} | {r['processes']} | {'yes' if r['ok'] else 'NO'} | "
            f"{r['measure']}: {r['first']:.3f} → {r['last']:.3f} | {r['train_runtime_s']} | {r['tokens_per_s']} | "
            f"{scale} | {peak} | {note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--group", choices=sorted(GROUPS), help="one of issue 20's groups (see --list)")
    parser.add_argument("--algorithms", default=None, help="comma list: only these algorithms (of the group)")
    parser.add_argument("--engines", default=None, help="comma list: only these engines, e.g. 1gpu,ddp,lora-zero2")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs (or CPU processes) of the multi-process runs")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (default: 30 SFT/CPT/DPO, 12 RL)")
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo) instead of GPUs: a smoke test")
    parser.add_argument("--list", action="store_true", help="print the runs and stop")
    parser.add_argument("--merge", type=Path, nargs="+", help="results dirs of several groups: one table into --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        rows = [r for d in args.merge for r in json.loads((d / "results.json").read_text())]
        add_comparisons(rows)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        text = table(rows, f"merged from {', '.join(map(str, args.merge))}")
        (args.out / "results.md").write_text(text + "\n")
        print(text)
        return 0
    if args.group:
        plan = list(GROUPS[args.group])
    else:
        plan = [(a, e) for e in (args.engines or "1gpu,ddp,zero2,zero3").split(",") for a in ALGORITHMS]
    if args.algorithms:
        plan = [(a, e) for a, e in plan if a in args.algorithms.split(",")]
    if args.engines and args.group:
        plan = [(a, e) for a, e in plan if e in args.engines.split(",")]
    for _, e in plan:
        split_engine(e)
    if args.list or not plan:
        print("\n".join(f"{a} {e}" for a, e in plan) or "nothing to run")
        return 0
    model_dir = build_model(args.out, args.shape)
    data = write_data(args.out)
    rows: list[dict] = []

    def steps(a: str) -> int:
        return args.steps or (12 if a in RL else 30)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "CPU"
    where = "CPU processes, gloo; peak GiB = resident memory of each process" if device == "CPU" else "GPUs"
    header = f"{device} x{args.gpus} ({where}); shape {args.shape}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"

    def done(row: dict) -> None:  # results written after every run, so a call cut short still leaves its table
        rows.append(row)
        add_comparisons(rows)
        print(json.dumps({k: row.get(k) for k in ("algorithm", "engine", "ok", "first", "last", "tokens_per_s",
                                                  "scaling", "peak_gib_per_device", "wall_s")}), flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2))
        (args.out / "results.md").write_text(table(rows, header) + "\n")

    # 1-GPU runs side by side, one on each GPU (the host has CPU to spare); on CPU one at a time
    from concurrent.futures import ThreadPoolExecutor

    singles = [(a, e) for a, e in plan if split_engine(e)[1] == "1gpu"]
    multis = [(a, e) for a, e in plan if split_engine(e)[1] != "1gpu"]
    import queue

    free: queue.Queue = queue.Queue()  # a GPU goes back when its run ends: never two runs on one GPU
    for i in range(args.gpus):
        free.put(None if args.cpu else i)

    def single(a: str, e: str) -> dict:
        gpu = free.get()
        try:
            return run(a, e, model_dir, args.out, steps(a), data, args, gpu)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(1 if args.cpu else args.gpus) as pool:
        futures = [pool.submit(single, a, e) for a, e in singles]
        for future in futures:
            done(future.result())
    for a, e in multis:
        done(run(a, e, model_dir, args.out, steps(a), data, args, None))
    print(table(rows, header))
    for r in rows:
        if not r["ok"]:
            why = r.get("error") or ("the headline metric did not move" if r.get("finite") else "a loss not finite")
            print(f"\n{r['algorithm']}-{r['engine']}: {why}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
