"""The Tinker backend end to end, through the CLI, against a real Tinker-API server on 127.0.0.1 (tests/tinker_harness).

The quickstart recipes run with `training.backend=tinker` on the built-in fai-rl/tiny-sft (the server's base model),
LoRA rank 8 (the local server's limit). What is asserted is what a user sees: metrics.jsonl, summary.json,
checkpoints.json, final/ and the exit code with its message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, copies_at_states

from fai_rl.cli.train import main

pytestmark = [pytest.mark.tinker, pytest.mark.slow]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_steps(got: list[dict], want: list[dict], rel: float = 0.0) -> bool:
    """Two runs' metric rows equal (within `rel`), wall times aside: a resumed run on the uninterrupted one's path."""
    def values(rows):
        return [{k: v for k, v in r.items() if not any(t in k for t in ("time", "queued_ahead"))} for r in rows]

    assert len(got) == len(want) and all(g.keys() == w.keys() for g, w in zip(values(got), values(want))), (got, want)
    for g, w in zip(values(got), values(want)):
        assert g == (w if rel == 0 else pytest.approx(w, rel=rel, abs=rel)), (g, w)
    return True



def run(algorithm: str, out, server, *overrides: str) -> int:
    recipe = ROOT / "recipes" / "quickstart" / f"{algorithm}.yaml"
    return main(["--recipe", str(recipe), "training.backend=tinker", f"tinker.base_url={server.base_url}",
                 "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8", f"training.output_dir={out}",
                 *overrides])


def test_sft_loss_falls_checkpoints_are_listed_and_the_adapter_loads_and_merges(tmp_path, tinker_env, capsys):
    out = tmp_path / "sft"
    began = time.time()
    assert run("sft", out, tinker_env, "training.max_steps=12", "training.eval_steps=null",
               "training.logging_steps=4", "training.learning_rate=3e-3", "training.warmup_steps=0",
               "tinker.save_every=6", "data.eval_datasets[0].max_samples=32", "data.max_length=38") == 0
    wall = time.time() - began
    rows = metrics(out)
    # the 1101 rows of 39 tokens (of 2032, train and eval) lose their last token: a step-0 row, a note at the start
    assert rows.pop(0) == {"step": 0, "truncated_rows": 1101.0, "truncated_row_tokens": 1101.0}
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < 0.8 * evals[0], evals
    assert [r["step"] for r in rows if "loss" in r] == [1, 4, 8, 12]
    # pipelined: each step's forward_backward is queued before the one before is awaited, except where a state is
    # saved (6) or the run ends (12); local server: 1.7-1.8 s/step vs 2.2-2.7 s waiting first
    assert [r["queued_ahead"] for r in rows if "loss" in r] == [1.0, 1.0, 1.0, 0.0]
    listed = json.loads((out / "checkpoints.json").read_text())["checkpoints"]
    assert [(c["kind"], c["step"]) for c in listed] == [("state", 6), ("state", 12), ("sampler", 12)]
    assert all(c["path"].startswith("tinker://") for c in listed)
    # the recipe's save_total_limit: 1 asks the service to delete state 6 once state 12 is saved; the local server has
    # no delete endpoint, so the run says so once and goes on (the state stays listed, not marked deleted)
    out_text = capsys.readouterr().out
    assert "1101 of 2032 examples (train and eval) longer than data.max_length=38 tokens were cut from the right" \
        in out_text
    assert out_text.count("note: training.save_total_limit: the service did not delete") == 1, out_text[-2000:]
    assert listed[0]["path"] in out_text and not listed[0].get("deleted")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "tinker" and summary["global_step"] == 12
    assert summary["tinker_state"] == listed[1]["path"]
    # final/: a PEFT adapter on the base model; merged, it gives the adapter model's logits.
    import torch
    from peft import AutoPeftModelForCausalLM

    note = json.loads((out / "final" / "fai_rl.json").read_text())
    assert note["kind"] == "peft_adapter" and note["backend"] == "tinker" and note["tinker_export_path"]
    model = AutoPeftModelForCausalLM.from_pretrained(out / "final")
    ids = torch.tensor([[256 + 1, 117, 115, 101, 114, 10, 87, 104]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    print(f"\ntinker SFT: eval_loss {evals[0]:.3f} -> {evals[-1]:.3f}, wall {wall:.0f} s")
    # SFT -> RL: GRPO starts from the SFT weights with a fresh optimizer, and its KL reference is that start
    capsys.readouterr()
    rl = tmp_path / "rl"
    assert run("grpo", rl, tinker_env, f"model.init_from={out}", "training.beta=0.1", "training.max_steps=2",
               "training.eval_steps=null", "training.logging_steps=1", "training.per_device_train_batch_size=16",
               "training.num_generations=4", "tinker.download_final=false", "data.eval_datasets=[]") == 0
    assert f"tinker: initialised from {listed[1]['path']} (weights only, fresh optimizer)" in capsys.readouterr().out
    first = metrics(rl)[0]
    assert abs(first["kl"]) < 1e-3, first  # sampled from the start, scored against it (the base model: far off)
    kinds = [c["kind"] for c in json.loads((rl / "checkpoints.json").read_text())["checkpoints"]]
    assert kinds[0] == "reference" and "state" in kinds


def test_resume_continues_from_the_last_recorded_state_with_its_optimizer(tmp_path, tinker_env, capsys):
    out = tmp_path / "resume"
    common = ("training.eval_steps=null", "training.logging_steps=1", "training.learning_rate=5e-3",
              "training.lr_scheduler_type=constant", "training.warmup_steps=0", "tinker.save_every=2",
              "tinker.download_final=false", "data.eval_datasets=[]", "tinker.checkpoint_ttl_s=3600")
    assert run("sft", out, tinker_env, "training.max_steps=4", *common) == 0
    listed = json.loads((out / "checkpoints.json").read_text())["checkpoints"]
    states = [c for c in listed if c["kind"] == "state"]
    assert [c["step"] for c in states] == [2, 4]
    # tinker.checkpoint_ttl_s: the state saved on the way may expire, the final state and sampler never do (the TTLs
    # the service was asked for, as the harness records them: None removes any expiry)
    with urllib.request.urlopen(f"{tinker_env.base_url}/_ttls", timeout=10) as r:
        ttls = json.loads(r.read())
    asked = {(c["kind"], c["step"]): ttls[c["path"].removeprefix("tinker://")] for c in listed}
    assert asked == {("state", 2): 3600, ("state", 4): None, ("sampler", 4): None}, asked
    assert states[0]["counters"]["num_tokens"] > 0  # running totals go with each state
    straight = [r for r in metrics(out) if r["step"] > 2]
    # resumed from the state at 2 (what a kill at step 3 leaves), steps 3-4 are the uninterrupted run's, the server's
    # loss included (steps 3 and 4 go one queued behind the other: the harness's engine keeps them in order)
    assert run("sft", out, tinker_env, "--resume", states[0]["path"], "training.max_steps=4", *common) == 0
    assert same_steps([r for r in metrics(out) if r["step"] > 2], straight, rel=1e-6)
    states = [c for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"] if c["kind"] == "state"]
    capsys.readouterr()
    assert run("sft", out, tinker_env, "--resume", "training.max_steps=7", *common) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {states[-1]['path']} (step 4), optimizer state included" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 7
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7]  # nothing logged twice, nothing skipped


def test_grpo_raises_the_reward_of_the_prompts_it_trains_on(tmp_path, tinker_env):
    # An easy task for a short run: 16 problems, trained on and evaluated on (8 samples each, before and after).
    out = tmp_path / "grpo"
    began = time.time()
    args = ("training.max_steps=12", "training.eval_steps=null", "training.logging_steps=1",
            "training.learning_rate=1e-3", "training.per_device_train_batch_size=64", "training.num_generations=4",
            "training.num_generations_eval=8", "training.per_device_eval_batch_size=128", "tinker.download_final=false",
            "data.datasets[0].max_samples=16", "data.eval_datasets[0].split=train",
            "data.eval_datasets[0].max_samples=16", "tinker.save_every=11")
    assert run("grpo", out, tinker_env, *args) == 0
    wall = time.time() - began
    rows = metrics(out)
    evals = [r["eval_reward"] for r in rows if "eval_reward" in r]
    train = [r["reward"] for r in rows if "reward" in r]
    first, last = sum(train[:3]) / 3, sum(train[-3:]) / 3
    assert evals[-1] > evals[0] + 0.15 and last > first, (train, evals)
    assert all("rewards/exact_match/mean" in r and r["step_time_s"] > 0 for r in rows if "reward" in r)
    # while it learns, the sampler and the trainer agree (Tinker's guidance: stable below ~0.01)
    drift = max(abs(r["kl_sample_train"]) for r in rows if "reward" in r)
    assert drift < 0.01 and all(r["loss"] == r["loss"] for r in rows if "reward" in r)
    print(f"\ntinker GRPO: train reward {first:.3f} -> {last:.3f}, eval_reward {evals[0]:.3f} -> {evals[-1]:.3f}, "
          f"max |kl_sample_train| {drift:.1e}, wall {wall:.0f} s")
    # resumed from the state at 11 (a kill at step 12): sampling is seeded per step, so step 12 draws the same
    # completions and the final evaluation the same samples as the uninterrupted run
    state = next(c["path"] for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"]
                 if c["kind"] == "state" and c["step"] == 11)
    assert run("grpo", out, tinker_env, *args, "--resume", state) == 0
    assert same_steps([r for r in metrics(out) if r["step"] > 11], [r for r in rows if r["step"] > 11], rel=1e-4)


def test_off_policy_grpo_in_rounds_resumes_onto_the_uninterrupted_path(tmp_path, tinker_env):
    # tinker.max_steps_off_policy 1 with rounds of 2 steps (num_iterations 2): round 2 (steps 3-4) is sampled during
    # step 2 on the round's start weights (0 updates), which no later state holds. The run keeps it beside each state
    # (sampled early at a state saved mid-round), and the round batch itself mid-round, so resuming from the state
    # at 1 (mid-round) or at 2 (between rounds) lands on the uninterrupted run's steps, metrics within rel 1e-4 (on
    # the service a sampler on old weights is a snapshot: the harness's engine gives each a slot of its own)
    out = tmp_path / "grpo-off-policy"
    args = ("training.max_steps=4", "training.num_iterations=2", "training.eval_steps=null",
            "training.logging_steps=1", "training.learning_rate=1e-3", "training.per_device_train_batch_size=16",
            "training.num_generations=4", "tinker.max_steps_off_policy=1", "tinker.save_every=1",
            "tinker.download_final=false", "data.datasets[0].max_samples=32", "data.eval_datasets=[]")
    with pytest.MonkeyPatch.context() as mp:
        killed = copies_at_states(mp, out)  # the run dir as a kill after each state leaves it
        assert run("grpo", out, tinker_env, *args) == 0
    rows = metrics(out)
    assert [r.get("off_policy_steps") for r in rows] == [0.0, None, 2.0, None]
    states = {c["step"]: c["path"] for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"]
              if c["kind"] == "state"}
    for k in (1, 2):
        assert run("grpo", killed[k], tinker_env, *args, "--resume", states[k]) == 0
        assert same_steps([r for r in metrics(killed[k]) if r["step"] > k], [r for r in rows if r["step"] > k],
                          rel=1e-4)


def test_dpo_margin_and_accuracy_rise(tmp_path, tinker_env):
    out = tmp_path / "dpo"
    began = time.time()
    args = ("training.max_steps=10", "training.eval_steps=null", "training.logging_steps=5",
            "training.learning_rate=1e-3", "tinker.download_final=false", "data.datasets[0].max_samples=64",
            "data.eval_datasets[0].max_samples=32", "training.per_device_eval_batch_size=64", "tinker.save_every=8")
    assert run("dpo", out, tinker_env, *args) == 0
    wall = time.time() - began
    rows = metrics(out)
    evals = [r for r in rows if "eval_rewards/margins" in r]
    # --resume from the state at 8 (a kill at step 9) lands on the uninterrupted run's steps 9-10 and final eval: the
    # reference is the base model's sampler on both paths (a sampler saved on the training client's weights follows
    # them on the local server, so a "snapshot" reference drifted there and a resumed run's did not)
    state = next(c["path"] for c in json.loads((out / "checkpoints.json").read_text())["checkpoints"]
                 if c["kind"] == "state" and c["step"] == 8)
    assert run("dpo", out, tinker_env, "--resume", state, *args) == 0
    # (compared: the final evaluation, a function of the weights after step 10; the train row at 10 averages the
    # logging window 6-10, of which the resumed run saw 9-10)
    def final_eval(rows):
        return [{k: v for k, v in r.items() if k.startswith("eval_")} for r in rows if r["step"] == 10
                and "eval_loss" in r]

    assert final_eval(rows) and same_steps(final_eval(metrics(out)), final_eval(rows), rel=1e-4)
    # pipelined (the next step's reference log-probs and forward_backward go while this one trains): local server
    # 7.4 s/step vs 9.9-10.2 waiting first
    assert [r["queued_ahead"] for r in rows if "queued_ahead" in r] == [1.0, 1.0, 0.0]
    assert evals[0]["eval_rewards/margins"] == pytest.approx(0, abs=1e-3)  # the policy starts as the reference
    # learning, read where 10 steps show it: the training margin (logged at steps 1, 5, 10) and the held-out loss.
    # Measured (2-core Xeon with AVX-512/AMX): train margin 0.009 -> 0.099, eval loss 4.88 -> 3.05. The held-out
    # margin over 32 pairs is not asserted: after 10 steps it was +0.046 on the previous CI machine and -0.002 here
    # (+0.021 by step 20, train margin 0.148 then): within its noise at this length.
    train = {r["step"]: r["rewards/margins"] for r in rows if "rewards/margins" in r}
    assert sorted(train) == [1, 5, 10] and train[10] > train[5] + 0.03
    assert evals[-1]["eval_loss"] < 0.8 * evals[0]["eval_loss"]
    # at step 0 the policy is the reference: margins are 0 up to float noise (~1e-7 where the trainer's forward and
    # the sampler's log-probs run in different batch shapes), so the share of positive ones is noise, not compared
    print(f"\ntinker DPO: train margin {train[5]:.3f} -> {train[10]:.3f}, "
          f"eval loss {evals[0]['eval_loss']:.2f} -> {evals[-1]['eval_loss']:.2f}, held-out margin "
          f"{evals[-1]['eval_rewards/margins']:.3f}, wall {wall:.0f} s")


@pytest.mark.parametrize("algorithm", ["gspo", "ppo"])
def test_gspo_and_ppo_run_and_log_what_they_optimise(tmp_path, tinker_env, algorithm, capsys):
    out = tmp_path / algorithm
    extra = ("training.num_generations=4", "training.per_device_train_batch_size=16",
             "training.drop_zero_variance_groups=true", "tinker.max_steps_off_policy=1",
             "training.log_rollouts_every=3") if algorithm == "gspo" else (
        "training.per_device_train_batch_size=16", "training.num_ppo_epochs=2", "data.max_length=30")
    assert run(algorithm, out, tinker_env, "training.max_steps=3", "training.eval_steps=null",
               "training.logging_steps=1", "tinker.download_final=false", "data.eval_datasets=[]", *extra) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(0 <= r["reward"] <= 1 for r in rows)
    loss = "loss" if algorithm == "gspo" else "policy_loss"  # GSPO's custom loss sees the trainer's log-probs itself
    assert all(abs(r["kl_sample_train"]) < 0.1 and r[loss] == r[loss] and r["entropy"] > 0 for r in rows), rows
    if algorithm == "gspo":  # DAPO's filter: the groups whose 4 rewards are all equal left out of the update
        assert all(r["truncated_prompts"] == 0 for r in rows)
        assert all(r["groups_dropped"] == round(4 * r["frac_reward_zero_std"]) for r in rows), rows
        # off-policy: batches 2 and 3 were sampled while the step before trained, on weights one step old
        assert [r["off_policy_steps"] for r in rows] == [0.0, 1.0, 1.0]
        staleness = {row["staleness"] for row in map(json.loads, (out / "rollouts" / "step-3.jsonl").open())}
        assert staleness in ({1}, set())  # per sample; set(): every group of step 3 was dropped
    if algorithm == "ppo":  # every 33-token prompt cut to data.max_length 30: counted per step and said once
        assert [(r["truncated_prompts"], r["truncated_prompt_tokens"]) for r in rows] == [(16, 48)] * 3
        printed = capsys.readouterr().out
        assert "note: 48 of 48 train prompts sampled longer than data.max_length=30 tokens were cut from the left " \
               "(144 tokens dropped" in printed
        assert "no learned critic on Tinker (no value head)" in printed
        assert "no value head" in json.loads((out / "summary.json").read_text())["critic"]


def test_a_killed_server_stops_the_run_with_the_resume_path_within_bounded_time(tmp_path):
    from tinker_harness.server import TinkerServer

    out = tmp_path / "fault"
    # request_timeout_s 30: a fresh server's first forward_backward includes its JIT compile (>10 s under CI load:
    # the run then gave up before saving a state); a killed server refuses or resets at once, so the bound holds
    with TinkerServer() as server:
        cmd = [sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(ROOT / "recipes/quickstart/sft.yaml"),
               "training.backend=tinker", f"tinker.base_url={server.base_url}", "model.base_model_name=fai-rl/tiny-sft",
               "tinker.lora_rank=8", f"training.output_dir={out}", "training.max_steps=100000",
               "training.eval_steps=null", "tinker.save_every=2", "tinker.request_timeout_s=30",
               "tinker.max_retries=1", "data.eval_datasets=[]"]
        env = {**os.environ, "TINKER_API_KEY": server.api_key, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not (out / "checkpoints.json").exists():
            assert proc.poll() is None and time.time() < deadline, "no state saved"
            time.sleep(0.5)
        server.kill()
        killed = time.time()
        _, err = proc.communicate(timeout=180)
        took = time.time() - killed
    assert proc.returncode == 2 and "Traceback" not in err
    state = json.loads((out / "checkpoints.json").read_text())["checkpoints"][-1]["path"]
    assert "Tinker:" in err and state.split("/step-")[0] in err and "--resume" in err, err
    assert took < 120, took
    assert not (out / "final").exists()
    print(f"\ntinker fault: the run stopped {took:.0f} s after the server died: {err.strip()[:200]}")


def test_missing_api_key_and_bad_tinker_keys_are_clear_errors_before_any_call(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    recipe = str(ROOT / "recipes/quickstart/sft.yaml")
    assert main(["--recipe", recipe, "training.backend=tinker", f"training.output_dir={tmp_path / 'x'}",
                 "--dry-run"]) == 2
    assert "TINKER_API_KEY is not set" in capsys.readouterr().err
    assert main(["--recipe", recipe, "training.backend=tinker", "tinker.api_key=tml-secret",
                 f"training.output_dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert "tinker.api_key" in err and "TINKER_API_KEY" in err and "tml-secret" not in err
    assert main(["--recipe", str(ROOT / "recipes/quickstart/dpo.yaml"), "training.backend=tinker",
                 "training.dpo_loss_type=[robust]", "tinker.resume_from=s3://x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "training.dpo_loss_type[0]: 'robust' is not offered on the Tinker backend" in err
    assert "tinker.resume_from: 's3://x' is not a Tinker path" in err
    assert not (tmp_path / "x").exists()
