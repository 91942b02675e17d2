"""Long context: how long a sequence a full fine-tune trains at on one GPU, fai-rl's shipped recipe next to TRL.

For a ladder of sequence lengths (one row of exactly that many tokens per optimizer step, batch 1, no accumulation)
it trains the Qwen3-0.6B shape (random init, bf16, RoPE positions up to the longest length) with
  trl        TRL's SFTTrainer defaults (activation checkpointing on, no Liger: full fp32 logits),
  trl_tuned  what an expert sets for long context: Liger's fused linear cross-entropy (the loss in chunks, no logits
             tensor) and activation checkpointing,
  fai        recipes/sft/qwen3_0.6b_full.yaml with only the length and batch 1 overridden: Liger, padding-free and
             checkpointing resolved by the recipe's null defaults (checkpointing turns on when the estimate says the
             length would not fit without it),
each length in its own process (scripts/bench.py's worker), back to back, stopping an implementation's ladder at its
first failure (out of memory). It reports per run: peak GPU memory, seconds per step (the second step; the first
warms up), tokens/s, whether checkpointing was on, and a linear fit of peak memory over length per implementation,
which gives the length at which that implementation would run out of the GPU's memory.

    python scripts/bench_long_context.py --out /tmp/long                      # 32k,64k,128k,192k
    python scripts/bench_long_context.py --out /tmp/long --ladder 16384,32768 --impls fai
    python scripts/bench_long_context.py --out /tmp/smoke --shape tiny --ladder 64,128 --in-process   # CPU smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts/bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(bench, shape: str, longest: int, work: Path, ladder: list[int]) -> None:
    """The model dir with positions up to `longest`, and two rows of each length (bench.run_one reads them)."""
    import random

    vocab = bench.SHAPES[shape]["vocab_size"]
    model_dir = bench.build_model_dir(shape, vocab, work)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("max_position_embeddings", 0) < longest:
        config["max_position_embeddings"] = longest
        (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    rng = random.Random(0)
    for seq in ladder:
        data = work / f"data-sft_full-{seq}.jsonl"
        if not data.exists():  # warm-up step + timed step + one spare row
            data.write_text("".join(json.dumps({"text": bench.words(rng, vocab, seq)}) + "\n" for _ in range(3)))


def spec_for(impl: str, seq: int, shape: str, work: Path, peak: float | None) -> dict:
    spec = {"name": f"{impl}@{seq}", "arm": "sft_full", "impl": "trl_tuned" if impl == "trl_tuned" else impl,
            "seq": seq, "shape": shape, "work": str(work), "steps": 1, "warmup": 1, "data": "fixed",
            "peak_tflops": peak, "completion_tokens": 0}
    if impl == "fai":
        spec["overrides"] = ["training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=1"]
    elif impl == "trl":
        spec["trl_kwargs"] = {"per_device_train_batch_size": 1}
    else:  # bench.TRL_TUNED's SFT settings turn checkpointing off for speed at 2,048; at long lengths it is needed
        import torch

        spec["trl_kwargs"] = {"per_device_train_batch_size": 1, "gradient_checkpointing": True,
                              "use_liger_kernel": torch.cuda.is_available()}  # no Liger kernels on a CPU
    return spec


def fit(rows: list[dict], total_gib: float | None) -> dict:
    """Least-squares line peak GiB = a + b * tokens over an implementation's successful runs; where it crosses the
    GPU's memory (less 2 GiB for the allocator and CUDA context). Only the runs with the longest run's checkpointing
    setting count (fai-rl turns it on past a length: two regimes, two slopes)."""
    ok_rows = [r for r in rows if "error" not in r and r.get("peak_gpu_mem_gib")]
    if not ok_rows:
        return {}
    regime = ok_rows[-1]["settings"].get("gradient_checkpointing")
    ok = [(r["seq"], r["peak_gpu_mem_gib"]) for r in ok_rows if r["settings"].get("gradient_checkpointing") == regime]
    if len(ok) < 2:
        return {}
    n = len(ok)
    mx, my = sum(x for x, _ in ok) / n, sum(y for _, y in ok) / n
    sxx = sum((x - mx) ** 2 for x, _ in ok)
    b = sum((x - mx) * (y - my) for x, y in ok) / sxx if sxx else 0.0
    a = my - b * mx
    out = {"gib_at_0": round(a, 2), "kib_per_token": round(b * 2**20, 1), "checkpointing": regime}
    if total_gib and b > 0:
        out["fits_up_to_tokens"] = int((total_gib - 2 - a) / b)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--ladder", default="32768,65536,131072,196608", help="comma list of sequence lengths, ascending")
    p.add_argument("--impls", default="trl,trl_tuned,fai")
    p.add_argument("--shape", default="qwen3-0.6b", choices=["qwen3-0.6b", "tiny"])
    p.add_argument("--budget-s", type=float, default=None, help="start no new run after this many seconds")
    p.add_argument("--in-process", action="store_true", help="run in this process (CPU smoke test)")
    args = p.parse_args(argv)
    bench = _bench()
    ladder = sorted(int(x) for x in args.ladder.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepare(bench, args.shape, ladder[-1], out, ladder)
    gpu = bench.gpu_name()
    peak = 790.0 if "H100" in gpu or "H200" in gpu else None
    total_gib = None
    try:
        import torch

        if torch.cuda.is_available():
            total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    except ImportError:
        pass
    started, results = time.time(), []
    for impl in args.impls.split(","):
        for seq in ladder:
            if args.budget_s and time.time() - started > args.budget_s:
                results.append({"name": f"{impl}@{seq}", "impl": impl, "seq": seq, "error": "not run (time budget)"})
                continue
            spec = spec_for(impl, seq, args.shape, out, peak)
            print(f"--- {spec['name']}", flush=True)
            t0 = time.time()
            try:
                if args.in_process:
                    result = bench.run_one(spec)
                else:
                    path = out / f"spec-{impl}-{seq}.json"
                    path.write_text(json.dumps(spec))
                    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
                    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--out", str(out),
                                           "--worker", str(path)], env=env, capture_output=True, text=True)
                    (out / f"log-{impl}-{seq}.txt").write_text(proc.stdout + proc.stderr)
                    if proc.returncode != 0:
                        lines = (proc.stderr or proc.stdout).strip().splitlines()
                        oom = any("OutOfMemoryError" in line or "out of memory" in line for line in lines)
                        raise RuntimeError("out of memory" if oom else lines[-1])
                    result = json.loads(path.with_suffix(".result.json").read_text())
            except Exception as e:  # noqa: BLE001 - the ladder stops here for this implementation
                result = {"name": spec["name"], "error": f"{type(e).__name__}: {e}"}
            result.update(impl=impl, seq=seq, wall_s=round(time.time() - t0, 1))
            print(json.dumps({k: v for k, v in result.items() if k not in ("step_s", "settings")}), flush=True)
            results.append(result)
            if "error" in result:
                break
    fits = {impl: fit([r for r in results if r["impl"] == impl], total_gib) for impl in args.impls.split(",")}
    meta = {"gpu": gpu, "shape": args.shape, "total_gib": total_gib, "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "command": "python scripts/bench_long_context.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    (out / "long_context.json").write_text(json.dumps({"meta": meta, "results": results, "fits": fits}, indent=1))
    lines = [f"GPU: {gpu}; shape {args.shape}; batch 1; {meta['date']}", "",
             "| run | tokens | peak GiB | s/step | tokens/s | checkpointing | Liger |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['seq']:,} | {r['error'][:60]} |  |  |  |  |")
            continue
        s = r["settings"]
        lines.append(f"| {r['impl']} | {r['seq']:,} | {r['peak_gpu_mem_gib']} | {r['median_step_s']} | "
                     f"{r['tokens_per_s']:,.0f} | {s.get('gradient_checkpointing')} | {s.get('use_liger_kernel')} |")
    lines += ["", "| run | GiB at 0 | KiB per token | fits up to (tokens, linear fit) |", "|---|---|---|---|"]
    lines += [f"| {impl} | {f.get('gib_at_0', '–')} | {f.get('kib_per_token', '–')} | {f.get('fits_up_to_tokens', '–')} |"
              for impl, f in fits.items()]
    (out / "long_context.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
