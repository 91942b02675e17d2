"""Local PPO: the maths on hand-made tensors (expected numbers worked out here), then end-to-end runs on CPU that
must learn, and a resume after a hard kill."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, kill_after_checkpoint

from fai_rl.backends.local.ppo import (
    compute_gae,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    step_rows,
    value_loss,
)

T = torch.tensor


# --------------------------------------------------------------------------------------------------------------------
# GAE


def test_gae_by_hand_on_one_sequence():
    # gamma 0.9, lam 0.5 (gamma * lam = 0.45); the score 1 sits on the last token; V after the last token is 0.
    #   t=3: delta = 1 + 0       - 0.2 =  0.80                 A3 =  0.80
    #   t=2: delta = 0 + 0.9*0.2 - 0.3 = -0.12   -0.12 + 0.45*0.80   A2 =  0.24
    #   t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13   -0.13 + 0.45*0.24   A1 = -0.022
    #   t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14   -0.14 + 0.45*-0.022 A0 = -0.1499
    # returns = A + V
    rewards = T([[0.0, 0.0, 0.0, 1.0]])
    values = T([[0.5, 0.4, 0.3, 0.2]])
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 4), gamma=0.9, lam=0.5)
    assert torch.allclose(advantages, T([[-0.1499, -0.022, 0.24, 0.8]]), atol=1e-6)
    assert torch.allclose(returns, T([[0.3501, 0.378, 0.54, 1.0]]), atol=1e-6)


def test_gae_with_gamma_and_lam_one_is_reward_to_go_minus_value():
    rewards, values = T([[0.1, 0.0, 2.0]]), T([[1.0, 0.5, 0.25]])
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert torch.allclose(returns, T([[2.1, 2.0, 2.0]]))  # plain reward-to-go
    assert torch.allclose(advantages, T([[1.1, 1.5, 1.75]]))


def test_gae_ignores_padding_after_the_last_token():
    # The padded row ends at t=2: same numbers as the 3-token sequence, whatever sits in the padding.
    #   t=2: delta = 1 - 0.3 = 0.7                                 A2 = 0.7
    #   t=1: delta = 0.9*0.3 - 0.4 = -0.13;  -0.13 + 0.45*0.7      A1 = 0.185
    #   t=0: delta = 0.9*0.4 - 0.5 = -0.14;  -0.14 + 0.45*0.185    A0 = -0.05675
    padded_r, padded_v = T([[0.0, 0.0, 1.0, 5.0]]), T([[0.5, 0.4, 0.3, -7.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = compute_gae(padded_r, padded_v, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(advantages, T([[-0.05675, 0.185, 0.7, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, T([[0.44325, 0.585, 1.0, 0.0]]), atol=1e-6)
    short_a, _ = compute_gae(padded_r[:, :3], padded_v[:, :3], mask[:, :3], gamma=0.9, lam=0.5)
    assert torch.allclose(advantages[:, :3], short_a)


def test_whitening_uses_only_real_tokens():
    # real tokens 1, 2, 3: mean 2, variance (1 + 0 + 1) / 3 = 2/3 -> (x - 2) / sqrt(2/3) = -1.2247, 0, 1.2247
    x, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    s = 1 / math.sqrt(2 / 3)
    assert torch.allclose(w, T([[-s, 0.0, s, 0.0]]), atol=1e-5)
    assert masked_mean(w, mask).abs() < 1e-6 and torch.allclose(masked_mean(w**2, mask), T(1.0), atol=1e-5)
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False), T([[2 - s, 2.0, 2 + s, 0.0]]), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# losses and rewards


def test_clipped_policy_loss_by_hand():
    # cliprange 0.2; per token: ratio r, advantage A, -A*r, -A*clip(r, 0.8, 1.2), the max (pessimistic) and clipped?
    #   r 1.1, A +1: -1.1, -1.1 -> -1.1 no      (inside the range)
    #   r 1.5, A +1: -1.5, -1.2 -> -1.2 yes     (good action, ratio already up: no more push)
    #   r 0.5, A -1:  0.5,  0.8 ->  0.8 yes     (bad action, ratio already down: no more push)
    #   r 0.5, A +1: -0.5, -0.8 -> -0.5 no      (good action pushed down: the unclipped, worse term counts)
    #   r 1.5, A -2:  3.0,  2.4 ->  3.0 no      (bad action pushed up: the unclipped, worse term counts)
    #   padding with absurd numbers: ignored
    # loss = (-1.1 - 1.2 + 0.8 - 0.5 + 3.0) / 5 = 0.2; clipfrac = 2/5
    ratios = T([[1.1, 1.5, 0.5, 0.5, 1.5, 9.0]])
    advantages = T([[1.0, 1.0, -1.0, 1.0, -2.0, 50.0]])
    mask = T([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    old = torch.full((1, 6), -2.0)
    new = (old + ratios.log()).requires_grad_()
    loss, clipfrac, approx_kl = policy_loss(new, old, advantages, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(0.2, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.4)
    log_r = ratios.log()[0, :5]
    assert approx_kl.item() == pytest.approx(0.5 * (log_r**2).mean().item(), rel=1e-5)
    loss.backward()
    # clipped tokens and padding get no gradient; the others get d(-A r / 5)/d log r = -A r / 5
    expected = T([[-1.1 / 5, 0.0, 0.0, -0.5 / 5, 3.0 / 5, 0.0]])
    assert torch.allclose(new.grad, expected, atol=1e-6)


def test_clipped_value_loss_by_hand():
    # cliprange_value 0.2; old V, new V, return R; V clipped to old +- 0.2; 0.5 * mean of max of squared errors:
    #   old 0, new 0.5, R 1: clipped 0.2; (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.64 clipped
    #   old 0, new 0.1, R 1: clipped 0.1; both 0.81                           -> 0.81 not clipped
    #   old 1, new 0.5, R 0: clipped 0.8; (0.5-0)^2 = 0.25, (0.8-0)^2 = 0.64 -> 0.64 clipped
    # loss = 0.5 * (0.64 + 0.81 + 0.64) / 3 = 0.348333; clipfrac 2/3
    old, new, returns = T([[0.0, 0.0, 1.0, 3.0]]), T([[0.5, 0.1, 0.5, -3.0]]), T([[1.0, 1.0, 0.0, 9.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac = value_loss(new, old, returns, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 2.09 / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_per_token_rewards_are_kl_penalties_plus_the_score_on_the_last_real_token():
    # kl_coef 0.1, reward_t = -0.1 * (logprob - ref_logprob), + score on the last real token:
    #   row 0 (3 real tokens), logprob - ref = 0.1, -0.2, 0.3; score 2 -> -0.01, 0.02, -0.03 + 2
    #   row 1 (2 real tokens), logprob - ref = 0.5, 0.4, (pad); score -1 -> -0.05, -0.04 - 1, 0
    ref = torch.zeros(2, 3)
    logprobs = T([[0.1, -0.2, 0.3], [0.5, 0.4, 9.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = per_token_rewards(T([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(rewards, T([[-0.01, 0.02, 1.97], [-0.05, -1.04, 0.0]]), atol=1e-6)


def test_step_rows_cover_each_epoch_once_and_split_processes():
    from fai_rl.config.load import load_recipe
    from fai_rl.schedule import Schedule

    rows = [{"i": i} for i in range(10)]
    recipe = load_recipe(str(ROOT / "recipes" / "quickstart" / "ppo.yaml"),
                         ["training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1",
                          "training.seed=3"])
    one, two = Schedule(recipe, 10), Schedule(recipe, 10, processes=2)
    one_epoch = [r["i"] for step in range(1, 6) for r in step_rows(rows, one, step, rank=0)]
    assert sorted(one_epoch) == list(range(10)) and one_epoch != list(range(10))
    assert step_rows(rows, one, 4, 0) == step_rows(rows, one, 4, 0)  # the step alone fixes the data
    both = [r["i"] for rank in (0, 1) for step in (1, 2) for r in step_rows(rows, two, step, rank)]
    assert len(set(both)) == 8  # two processes never take the same prompt within an epoch
    # the processes' slices of a step are the step's rows in the shared schedule, as the Tinker backend takes them
    assert [r["i"] for rank in (0, 1) for r in step_rows(rows, two, 1, rank)] == two.rows(0)


# --------------------------------------------------------------------------------------------------------------------
# End to end on CPU


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads of a tiny model spin against other work (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def small_ppo_recipe(out: Path, **training) -> dict:
    return {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": [{"name": "fai-rl/arithmetic", "split": "train", "max_samples": 256}]},
        "training": {
            "algorithm": "ppo", "output_dir": str(out), "learning_rate": 1e-3, "lr_scheduler_type": "constant",
            "max_steps": 400, "per_device_train_batch_size": 8, "max_completion_length": 4, "num_ppo_epochs": 2,
            "logging_steps": 1, "save_steps": 3, "bf16": False, **training,
        },
        "rewards": [{"function": "exact_match"}],
    }


# Runs the CLI with the PPO dispatch line added (a no-op once fai_rl.backends has it).


@pytest.mark.slow
def test_resume_after_a_kill_continues_exactly_where_the_run_stopped(write_recipe, tmp_path, one_thread):
    from fai_rl.cli.train import main

    out = tmp_path / "resume"
    path = write_recipe(small_ppo_recipe(out))
    kill_after_checkpoint(path, out / "checkpoint-6")
    assert not (out / "final").exists()
    saved = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "value_head.pt", "model.safetensors"):
        assert (out / f"checkpoint-{saved}" / name).exists(), name
    assert main(["--recipe", str(path), "--resume", f"training.max_steps={saved + 3}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved and summary["global_step"] == saved + 3
    rows = [row for row in metrics(out) if "reward" in row]
    steps = [row["step"] for row in rows]
    assert steps == list(range(1, saved + 4))  # nothing lost, nothing logged twice
    assert json.loads((out / f"checkpoint-{saved + 3}" / "trainer_state.json").read_text())["global_step"] == saved + 3
    assert (out / "final" / "model.safetensors").exists()

    # The same steps without the interruption: weights, optimizer, RNG and data position were all restored, so the
    # steps after the resume are the very same ones.
    straight = tmp_path / "straight"
    assert main(["--recipe", str(write_recipe(small_ppo_recipe(straight, max_steps=saved + 3), "straight.yaml"))]) == 0
    expected = [row for row in metrics(straight) if "reward" in row]
    for got, want in zip(rows[saved:], expected[saved:], strict=True):
        assert got["step"] == want["step"]
        for key in ("reward", "kl", "policy_loss", "value_loss", "completion_length"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["step"], key)


def window_mean(rows: list[dict], key: str, which: slice) -> float:
    values = [row[key] for row in rows if key in row][which]
    return sum(values) / len(values)


@pytest.mark.slow
def test_quickstart_learns_digits(tmp_path, one_thread, capsys):
    from fai_rl.cli.train import main

    out = tmp_path / "quickstart"
    began = time.time()
    assert main(["--recipe", str(ROOT / "recipes/quickstart/ppo.yaml"), f"training.output_dir={out}"]) == 0
    wall = time.time() - began
    printed = capsys.readouterr().out
    assert "PPO on this backend: value head on the policy backbone" in printed
    rows = metrics(out)
    train = [row for row in rows if "reward" in row]
    assert [row["step"] for row in train] == [1, *range(5, 51, 5)]
    # The sampled reward rises by at least 0.2 (first two logging windows against the last two) ...
    first, last = window_mean(train, "reward", slice(0, 2)), window_mean(train, "reward", slice(-2, None))
    assert last - first >= 0.2, (first, last)
    # ... and so does the held-out reward (16 samples for each of the 40 problems never trained on).
    evals = [row["eval_reward"] for row in rows if "eval_reward" in row]
    assert evals[-1] - evals[0] >= 0.2, evals
    # The critic learns: its error relative to the spread of the returns falls (explained variance rises). Its raw
    # loss is not asked to fall: with 0/1 rewards the loss floor is 0.5 * p(1 - p), which grows while the reward
    # climbs toward 0.5, so the loss falls less than the critic improves (0.107 -> 0.086 on one machine, 0.125 ->
    # 0.121 on a 2-core AVX-512/AMX Xeon, where the reward went 0.25 -> 0.6).
    assert window_mean(train, "explained_variance", slice(-3, None)) > window_mean(
        train, "explained_variance", slice(0, 3))
    assert all(0 <= row["clipfrac"] <= 1 and row["kl"] < 5 for row in train)
    assert [row["step"] for row in rows if "eval_reward" in row] == [0, 25, 50]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["reward"] == {"first": train[0]["reward"], "last": train[-1]["reward"]}
    assert summary["global_step"] == 50 and summary["algorithm"] == "ppo" and summary["tokens_per_s"] > 0
    print(f"\nPPO quickstart: reward {first:.3f} -> {last:.3f}, value loss {train[0]['value_loss']:.4f} -> "
          f"{train[-1]['value_loss']:.4f}, eval_reward {evals[0]:.3f} -> {evals[-1]:.3f}, "
          f"train {summary['train_runtime_s']} s, wall {wall:.1f} s")
    # Artefacts: one checkpoint kept (save_total_limit 1), final/ a plain HF model dir that reloads.
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-50"]
    assert json.loads((out / "checkpoint-50" / "trainer_state.json").read_text())["global_step"] == 50
    note = json.loads((out / "final" / "fai_rl.json").read_text())
    assert note["kind"] == "full_model" and note["algorithm"] == "ppo" and note["global_step"] == 50
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() > 0


@pytest.mark.slow
def test_lora_with_a_value_model_and_a_reward_model(write_recipe, tmp_path, one_thread, capsys):
    """The other critic and reward paths: LoRA policy (reference = adapter off), separate value model, reward model."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from fai_rl.cli.train import main
    from fai_rl.models.load import resolve_model_path

    tiny = resolve_model_path("fai-rl/tiny")
    config = AutoConfig.from_pretrained(tiny, num_labels=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "rm")
    out = tmp_path / "lora"
    recipe = small_ppo_recipe(out, max_steps=3, save_steps=2, fast_generation=True)  # the decoder, eager on CPU
    recipe["model"].update({"use_lora": True, "lora_r": 4, "lora_dropout": 0.1, "value_model_name": "fai-rl/tiny",
                            "reward_model_name": str(tmp_path / "rm")})
    recipe["data"]["eval_datasets"] = [{"name": "fai-rl/arithmetic", "split": "test", "max_samples": 8}]
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    out_text = capsys.readouterr().out
    assert "PPO on this backend: value model fai-rl/tiny + scalar head" in out_text
    assert "fast_generation on" in out_text  # sampled by fai_rl.decode's GraphDecoder (its eager step on a CPU)
    train = [row for row in metrics(out) if "reward" in row]
    assert "rewards/reward_model" in train[0] and "rewards/exact_match" in train[0]
    assert train[0]["kl"] == 0.0 and train[-1]["kl"] != 0.0  # the adapter-off reference differs once trained
    ckpt = out / "checkpoint-2"
    for name in ("adapter_model.safetensors", "value_model/model.safetensors", "value_head.pt", "optimizer.pt"):
        assert (ckpt / name).exists(), name
    final = out / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    assert json.loads((final / "fai_rl.json").read_text())["kind"] == "peft_adapter"
    # resume from the adapter checkpoint: adapter, value model and head are loaded back, the run continues at step 3
    assert main(["--recipe", str(write_recipe(recipe)), "--resume", "training.max_steps=4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 4
    assert [row["step"] for row in metrics(out) if "reward" in row] == [1, 2, 3, 4]


def test_keys_ppo_cannot_honour_are_reported_together(write_recipe, tmp_path, capsys):
    from fai_rl.cli.train import main

    # rollout = per_device 8 x gradient_accumulation_steps 2 = 16 prompts: 3 mini-batches cannot split it
    recipe = small_ppo_recipe(tmp_path / "run", optim="adafactor", gradient_accumulation_steps=2, num_mini_batches=3)
    assert main(["--recipe", str(write_recipe(recipe)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "2 errors" in err and "training.optim: 'adafactor'" in err and "training.num_mini_batches: 3" in err
    assert "rollout batch of 16 prompts" in err


def test_dry_run_shows_prompts_and_the_reward_preview(tmp_path, capsys):
    from fai_rl.cli.train import main

    recipe = ROOT / "recipes/quickstart/ppo.yaml"
    assert main(["--recipe", str(recipe), "--dry-run", f"training.output_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 115 train, 40 eval" in out and "<|im_start|>assistant\\n" in out
    assert "exact_match" in out and "critic: value head on the policy backbone" in out
    assert not (tmp_path / "run").exists()
