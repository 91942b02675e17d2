"""Exact resume on the Tinker backend (issue 18) for GSPO, RLOO, PPO, CPT and the workflow loop, against the local
Tinker-API server (tests/tinker_harness). (SFT, GRPO and DPO resume tests are in test_tinker_backend.py.)

One uninterrupted run per algorithm (module-scoped), saving a state at every step; resuming from its state at step k
is a kill after step k: the state named step-k is what such a kill leaves (the loop saves it after the step's log and
evaluation, the last one after the final evaluation), so a kill *during* an evaluation resumes from the step before
and evaluates again. The resumed run's steps and evaluations must equal the uninterrupted run's within rel 1e-4, wall
times aside, and its summary.json totals (generated tokens, prompts cut) the whole run's. Measured on 2 cores shared
with other work (load ~3): the whole file 252 s wall (7 tests), including the server's start (~20 s) and its first
compiles.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import ROOT, copies_at_states

from fai_rl.cli.train import main

pytestmark = [pytest.mark.tinker, pytest.mark.slow]

WALL = ("time", "queued_ahead")  # wall-clock numbers and the pipelining flag differ run to run by design

# each case: the recipe (a quickstart's name), its overrides, the states resumed from. The smallest runs that still
# exercise each algorithm: 2 steps (PPO 3), evaluated at 0 and at the end; k = 1 resumes the last step and the final
# evaluation, which is also where a kill during that evaluation resumes (the last state is saved after it). Every
# training batch is 16 sequences of <= 48 tokens (skyrl-tx compiles per micro-batch shape, 8-25 s each on 2 cores;
# one shape for all cases keeps the file fast)
STEPS = ("training.max_steps=2", "training.eval_steps=null", "training.learning_rate=1e-3")
RL = (*STEPS, "training.per_device_eval_batch_size=16", "training.num_generations_eval=2",
      "data.eval_datasets[0].max_samples=8", "data.datasets[0].max_samples=32")
CASES = {
    # rounds of 2 optimizer steps (num_iterations 2: both train on the batch the first sampled): k = 1 is mid-round
    "gspo": ("gspo", (*RL, "training.num_iterations=2", "training.per_device_train_batch_size=16",
                      "training.num_generations=4"), (1,)),
    # every prompt (33 tokens) cut by one to data.max_length: the run's truncation totals have something to count
    "rloo": ("rloo", (*RL, "training.per_device_train_batch_size=16", "training.num_generations=4",
                      "data.max_length=32"), (1,)),
    # the ema baseline carries a running mean from step to step (seen only with whitening off: whitening takes any
    # constant baseline out again); 2 epochs of the clipped loss per step; KL to the base model. Off-policy (the next
    # batch sampled while this one trains): step 2's batch was made, with the mean after step 1's, before the state
    # at 1 was saved; it is kept beside the state and not made again on resume, so the mean restored must include it
    # (step 3's advantages use it). On-policy the same counter holds the mean after the state's own step
    "ppo": ("ppo", (*RL, "training.max_steps=3", "training.per_device_train_batch_size=16",
                    "training.num_ppo_epochs=2", "training.seed=3", "tinker.ppo_baseline=ema",
                    "training.whiten_advantages=false", "tinker.max_steps_off_policy=1"), (1,)),
    # the SFT/DPO loop, pipelined (the next step queued before this one is awaited) except around saves and evals
    "cpt": ("cpt", STEPS, (1,)),
    # the workflow loop: solver and judge episodes per task (4 tasks x 4 x 3 turns = 48 data), pass@k evaluations
    "solver_judge": ("solver_judge", (*STEPS, "training.per_device_train_batch_size=16",
                                      "training.num_generations_eval=2", "data.eval_datasets[0].max_samples=4",
                                      "data.datasets[0].max_samples=32"), (1,)),
    # off-policy (step N+1's episodes run on the weights before step N's update, beside it): step 2's episodes were
    # run before the state at 1 was saved, on weights no state holds; they are kept beside the state and taken on
    # resume (before, the resumed run ran them on-policy: off_policy_steps 0, another loss)
    "solver_judge_off_policy": ("solver_judge", (*STEPS, "training.per_device_train_batch_size=16",
                                                 "training.num_generations_eval=2",
                                                 "data.eval_datasets[0].max_samples=4",
                                                 "data.datasets[0].max_samples=32", "tinker.max_steps_off_policy=1"),
                                (1,)),
}
# CPT has no quickstart recipe: raw text (the digits prompts) packed into 48-token blocks
CPT = """
model: {base_model_name: fai-rl/tiny-sft}
data:
  datasets: [{name: fai-rl/digits, split: train, max_samples: 64, text_column: prompt}]
  eval_datasets: [{name: fai-rl/digits, split: test, max_samples: 16, text_column: prompt}]
  max_length: 48
training: {algorithm: cpt, output_dir: runs/cpt, learning_rate: 1.0e-3, per_device_train_batch_size: 16,
           per_device_eval_batch_size: 16, seed: 42}
"""


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def values(rows):
    return [{k: v for k, v in r.items() if not any(t in k for t in WALL)} for r in rows]


def run(recipe: str, out, server, *overrides: str) -> int:
    path = ROOT / "recipes" / "quickstart" / f"{recipe}.yaml"
    if recipe == "cpt":
        path = out.parent / "cpt.yaml"
        path.write_text(CPT)
    return main(["--recipe", str(path), "training.backend=tinker",
                 f"tinker.base_url={server.base_url}", "model.base_model_name=fai-rl/tiny-sft", "tinker.lora_rank=8",
                 f"training.output_dir={out}", "tinker.save_every=1", "tinker.download_final=false",
                 "training.logging_steps=1", *overrides])


@pytest.fixture(scope="module")
def straight(tinker_server, tmp_path_factory):
    """name -> (output_dir, seconds, {step: copy of the run dir as it was just after the state at step was saved}) of
    its uninterrupted run, made on first use. A copy is what a kill right after that save leaves (the finished run's
    dir holds later states and rows, and no tinker_rounds/: the final state needs none)."""
    made: dict = {}

    def get(name: str):
        if name not in made:
            recipe, overrides, _ = CASES[name]
            out = tmp_path_factory.mktemp("straight") / name
            began = time.time()
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("TINKER_API_KEY", tinker_server.api_key)
                mp.delenv("TINKER_BASE_URL", raising=False)
                killed = copies_at_states(mp, out)
                assert run(recipe, out, tinker_server, *overrides) == 0
            made[name] = out, time.time() - began, killed
        return made[name]

    return get


def rounds(out) -> list[str]:
    return sorted(p.name for p in (out / "tinker_rounds").glob("*")) if (out / "tinker_rounds").exists() else []


@pytest.mark.parametrize("name,k", [(n, k) for n, (_, _, ks) in CASES.items() for k in ks])
def test_resumed_run_takes_the_uninterrupted_runs_steps(name, k, straight, tinker_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    reference, took, killed = straight(name)
    want = [r for r in metrics(reference) if r["step"] > k]
    state = next(c["path"] for c in json.loads((reference / "checkpoints.json").read_text())["checkpoints"]
                 if c["kind"] == "state" and c["step"] == k)
    out = tmp_path / name
    shutil.copytree(killed[k], out)  # what the run dir holds after a kill right after the state at k was saved
    recipe, overrides, _ = CASES[name]
    began = time.time()
    assert run(recipe, out, tinker_server, *overrides, "--resume", state) == 0
    got = [r for r in metrics(out) if r["step"] > k]
    print(f"\ntinker {name}: straight {took:.0f} s, resumed from {k} {time.time() - began:.0f} s")
    assert any(key.startswith("eval_") for r in want for key in r) and any("learning_rate" in r for r in want), want
    summary, whole = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary["resumed_from_step"] == k
    for key in ("generated_tokens", "truncated_prompts", "truncated_prompt_tokens"):  # the whole run's, resumed or not
        assert summary.get(key) == whole.get(key), (key, summary.get(key), whole.get(key))
    if name == "rloo":
        assert whole["truncated_prompts"] > 0 and whole["generated_tokens"] > 0, whole
    if name == "gspo":  # the rest of the round trains on the batch its first step sampled, kept beside the state
        assert (killed[k] / "tinker_rounds" / f"step-{k:06d}.json").exists()
    if name in ("ppo", "solver_judge_off_policy"):  # the batch made ahead of the state, on weights it does not hold
        assert (killed[k] / "tinker_rounds" / f"ahead-{k:06d}.json").exists()
    if name == "ppo":  # the ema baseline differs from each batch's own mean: a lost running mean would show
        assert all(r["advantages/mean"] != 0 for r in want if "advantages/mean" in r), want
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(values(got), values(want), strict=True):
        assert g.keys() == w.keys() and g == pytest.approx(w, rel=1e-4, abs=1e-6), (g, w)
    assert rounds(out) == [] and rounds(reference) == []  # finished: the final state needs nothing beside it


def test_rounds_files_follow_the_states_they_belong_to(straight):
    # PPO (quickstart save_total_limit 1, off-policy: the batch made ahead beside each state). The local server has
    # no delete endpoint, so the state at 1 stays on the service (a note), but the limit keeps one resume point: its
    # file goes once the state at 2 is saved. GSPO's state at 1 is mid-round (its batch kept); 2 is the end
    _, _, ppo = straight("ppo")
    assert rounds(ppo[1]) == ["ahead-000001.json"]
    assert rounds(ppo[2]) == ["ahead-000002.json"]
    _, _, gspo = straight("gspo")
    assert rounds(gspo[1]) == ["step-000001.json"]
