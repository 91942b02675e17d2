"""What a run leaves for a person: curves.png's panels, the closing table and the run card, per algorithm.

Built from metrics shaped like real runs' (the keys TRL's GRPOTrainer logs), without training anything.
"""

from __future__ import annotations

import json

import yaml

from fai_rl.artifacts import RunDir, curve_panels
from fai_rl.cli.train import format_summary
from fai_rl.export.card import run_card


def grpo_rows() -> list[dict]:
    """Four logging steps of a GRPO run: reward rises, clip ratios stay 0, eval_loss is the surrogate's noise."""
    rows = []
    for step, reward in zip((0, 2, 4, 6), (0.1, 0.2, 0.4, 0.5), strict=True):
        rows.append({"step": step, "loss": 0.01 * step, "reward": reward, "kl": 0.001 * step, "epoch": step / 6,
                     "num_tokens": 100 * step, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
                     "completions/mean_length": 5 - step / 3, "step_time": 1.5 + step, "learning_rate": 1e-4})
        rows.append({"step": step, "eval_reward": reward + 0.05, "eval_rewards/exact_match/mean": reward + 0.05,
                     "eval_loss": (-1) ** step * 0.003 * (step + 1), "eval_runtime": 2.0})
    return rows


def test_curves_lead_with_the_headline_and_skip_flat_series_and_meaningless_ones(tmp_path):
    panels = dict(curve_panels(grpo_rows(), "grpo"))
    names = list(panels)
    assert names[:3] == ["reward", "kl", "completions/mean_length"]  # GRPO's headline, eval_reward on reward's panel
    assert set(panels["reward"]) == {"train", "eval"}
    assert "clip_ratio/low_mean" not in panels and "learning_rate" not in panels  # flat: nothing to see
    assert "step_time" not in panels and "epoch" not in panels and "num_tokens" not in panels
    assert "rewards/exact_match/mean" not in panels  # the same numbers as eval_reward: drawn once
    assert set(panels["loss"]) == {"train"}  # GRPO's eval_loss is not drawn
    # SFT keeps eval_loss on the loss panel, first; a flat headline is still drawn (a stuck loss is the news)
    sft = [{"step": s, "loss": 2.0, "eval_loss": 2.5 - s / 10, "mean_token_accuracy": 0.5} for s in (0, 5)]
    assert [(k, sorted(v)) for k, v in curve_panels(sft, "sft")] == [("loss", ["eval", "train"]),
                                                                     ("mean_token_accuracy", ["train"])]
    run = RunDir(tmp_path)
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in grpo_rows()))
    assert run.plot_curves("grpo").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closing_table_and_run_card_keep_to_the_algorithms_metrics(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in grpo_rows()))
    summary = run.write_summary(algorithm="grpo", backend="local", global_step=6)
    table = format_summary(summary, tmp_path, "grpo")
    rows = [line.split()[0] for line in table.strip().splitlines()[1:5]]
    assert rows == ["eval_reward", "reward", "kl", "completions/mean_length"]
    assert "eval_loss" not in table and "clip_ratio" not in table and "+0.4" in table  # a reward's change: +0.4
    recipe = {"model": {"base_model_name": "Qwen/Qwen3-0.6B", "use_lora": True},
              "data": {"datasets": [{"name": "fai-rl/digits", "split": "train"}], "eval_split_ratio": 0.1},
              "training": {"algorithm": "grpo", "backend": "local"}}
    (tmp_path / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    card = run_card(tmp_path, ["fai-rl-train", "--recipe", "r.yaml", "wandb.api_key=sekret123", "training.seed=3"])
    assert "base_model: Qwen/Qwen3-0.6B" in card and "library_name: peft" in card
    assert "`Qwen/Qwen3-0.6B` post-trained with fai-rl by GRPO (group relative policy optimisation) for 6 steps" in card
    assert "- train: `fai-rl/digits` (split `train`)" in card and "- eval: 0.1 of the train rows held out" in card
    assert "| eval_reward | 0.15 | 0.55 | +0.4 |" in card and "eval_loss" not in card
    assert "fai-rl-train --recipe r.yaml 'wandb.api_key=***' training.seed=3" in card and "sekret" not in card
