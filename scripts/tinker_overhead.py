"""Client overhead of fai-rl's Tinker SFT loop against a bare SDK loop, on the same server, data and batch.

    .venv/bin/python scripts/tinker_overhead.py [--steps 30] [--warmup 5] [--batch 16]

Starts the local Tinker-API server of the tests (tests/tinker_harness; install it with tests/tinker_harness/install.sh),
then runs (a) a bare loop: forward_backward + optim_step submitted together and awaited, on datums built once up
front, and (b) `fai-rl-train` with the SFT quickstart recipe on the Tinker backend with the same batch, logging every
step. Reports the median step time of each after `--warmup` steps (compiles) and the overhead (b / a - 1) as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    import os

    import tinker
    from tinker_harness.server import TinkerServer

    from fai_rl.backends.tinker.sft import to_datum
    from fai_rl.cli.train import main as train
    from fai_rl.config import load_recipe
    from fai_rl.data.prepare import prepare_sft_data
    from fai_rl.models.load import load_tokenizer
    from fai_rl.schedule import Schedule

    recipe_path = ROOT / "recipes" / "quickstart" / "sft.yaml"
    out = Path(tempfile.mkdtemp(prefix="tinker-overhead-"))
    overrides = ["training.backend=tinker", "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8",
                 f"training.max_steps={args.steps}", f"training.per_device_train_batch_size={args.batch}",
                 "training.logging_steps=1", "training.eval_steps=null", "data.eval_datasets=[]",
                 "tinker.download_final=false", "training.learning_rate=1e-3", "training.warmup_steps=0",
                 "training.save_steps=100000"]
    recipe = load_recipe(recipe_path, overrides + [f"training.output_dir={out / 'run'}"])
    examples = prepare_sft_data(recipe, load_tokenizer(recipe.model)).train
    with TinkerServer() as server:
        os.environ["TINKER_API_KEY"] = server.api_key
        sc = tinker.ServiceClient(base_url=server.base_url)
        tc = sc.create_lora_training_client(base_model=server.base_model, rank=8).result(timeout=600)
        s = Schedule(recipe, len(examples))  # the run's own step order (recipe: per_device = args.batch)
        data = [[to_datum(tinker, examples[i]) for i in s.rows(k)] for k in range(args.steps)]
        bare = []
        for batch in data:
            began = time.time()
            fb = tc.forward_backward(batch, "cross_entropy")
            opt = tc.optim_step(tinker.AdamParams(learning_rate=1e-3))
            fb.result(timeout=600)
            opt.result(timeout=600)
            bare.append(time.time() - began)
        sc.close("success").result(timeout=30)
        assert train(["--recipe", str(recipe_path), *overrides, f"tinker.base_url={server.base_url}",
                      f"training.output_dir={out / 'run'}"]) == 0
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    ours = [r["step_time_s"] for r in rows if "step_time_s" in r]
    a, b = statistics.median(bare[args.warmup :]), statistics.median(ours[args.warmup :])
    print(json.dumps({"steps": args.steps, "warmup": args.warmup, "batch": args.batch,
                      "bare_sdk_median_step_s": round(a, 4), "fai_rl_median_step_s": round(b, 4),
                      "overhead": round(b / a - 1, 4)}, indent=2))


if __name__ == "__main__":
    main()
