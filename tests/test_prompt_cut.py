"""data.max_length on the local GRPO/GSPO/RLOO trainers (fai_rl.backends.local.prompt_cut): the prompt token ids TRL
samples from are the Tinker driver's (fai_rl.data.rl.render_prompts, what rollouts.sample sends), cut from the left
and counted as it counts them. The Tinker side of the counting is tested in tests/test_tinker_backend.py."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from fai_rl.cli.train import main

LIMIT = 40
SHORT = "What is 3 + 4?"  # 33 tokens through fai-rl/tiny-sft's chat template: kept whole
LONG = "Think it over, then answer. What is 3 + 4?"  # 61 tokens: its first 21 are cut


def _rows():
    return [{"prompt": [{"role": "user", "content": SHORT}]},
            {"prompt": [{"role": "user", "content": LONG}]},
            {"prompt": [{"role": "system", "content": "Answer with a number only, please."},
                        {"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"},
                        {"role": "user", "content": SHORT}]}]


@pytest.mark.parametrize("trainer", ["GRPOTrainer", "RLOOTrainer"])
def test_local_trainers_sample_from_the_prompt_ids_the_tinker_driver_sends(tmp_path, trainer):
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from fai_rl.backends.local.prompt_cut import with_prompts_cut
    from fai_rl.config.schema import ModelConfig
    from fai_rl.data.rl import render_prompts
    from fai_rl.data.truncation import Truncations
    from fai_rl.models.load import load_tokenizer, resolve_model_path

    tok = load_tokenizer(ModelConfig(base_model_name="fai-rl/tiny-sft"))
    rows, generations = _rows(), 2
    tinker_cuts = Truncations("prompt", LIMIT)
    tinker = render_prompts(tok, rows, LIMIT, tinker_cuts)  # the Tinker driver's ids (rollouts.sample)
    full = render_prompts(tok, rows)
    assert [len(ids) for ids in full] == [33, 61, 113]
    config_name = trainer.replace("Trainer", "Config")
    args = getattr(trl, config_name)(output_dir=str(tmp_path), per_device_train_batch_size=2 * generations,
                                     num_generations=generations, max_completion_length=4, report_to=[], use_cpu=True)
    cls = with_prompts_cut(getattr(trl, trainer), LIMIT)
    local = cls(model=AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny-sft")),
                reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                train_dataset=Dataset.from_list(rows), processing_class=tok)
    local.model.train()
    repeated = [row["prompt"] for row in rows for _ in range(generations)]  # TRL's batch: each prompt G times
    ids, _, _ = local._tokenize_prompts(repeated)
    assert [list(x) for x in ids[::generations]] == tinker
    # the cut keeps the end: the latest user turn and the opened assistant turn, token for token
    assert tinker[0] == full[0] and tinker[1] == full[1][-LIMIT:] and tinker[2] == full[2][-LIMIT:]
    assert tok.decode(tinker[1]).endswith(f"{SHORT}<|im_end|>\n<|im_start|>assistant\n")
    # counted once per prompt, as the Tinker driver counts (2 of 3 cut, 21 + 73 tokens), and logged under its names
    train = local._cut_since_log["train"]
    assert (train.seen, train.rows, train.tokens) == (tinker_cuts.seen, tinker_cuts.rows, tinker_cuts.tokens) == \
        (3, 2, 21 + 73)
    assert local.prompts_cut.line("train prompts sampled") == tinker_cuts.line("train prompts sampled")
    logs = {"loss": 0.5}
    local.log(logs)
    assert logs["truncated_prompts"] == 2 and logs["truncated_prompt_tokens"] == 94
    logs = {"loss": 0.5}
    local.log(logs)  # nothing sampled since the last log: no row of counts, as on Tinker
    assert "truncated_prompts" not in logs


def test_a_local_grpo_run_logs_the_cut_prompts_per_step_and_says_it_once(tmp_path, capsys, monkeypatch):
    # 4 train prompts (2 long), 2 per round of 8 completions, 2 steps; 4 eval prompts (2 long), 4 samples each,
    # evaluated before and after training
    from fai_rl.backends.local.prompt_cut import CutPrompts

    data = tmp_path / "prompts.jsonl"
    questions = [SHORT, LONG, SHORT.replace("3", "2"), LONG.replace("3", "2")]
    data.write_text("".join(json.dumps({"prompt": q, "answer": "7"}) + "\n" for q in questions))
    batches = []  # (mode, prompts cut) of every generation batch
    tokenize = CutPrompts._tokenize_prompts

    def recorded(self, prompts):
        out = tokenize(self, prompts)
        batches.append(("train" if self.model.training else "eval", [len(x) for x in out[0]],
                        sum(p[-1]["content"].startswith("Think") for p in prompts)))
        return out

    monkeypatch.setattr(CutPrompts, "_tokenize_prompts", recorded)
    out = tmp_path / "run"
    assert main(["--recipe", str(ROOT / "recipes/quickstart/grpo.yaml"), f"training.output_dir={out}",
                 f"data.datasets[0].name={data}", f"data.eval_datasets[0].name={data}",
                 f"data.max_length={LIMIT}", "training.max_steps=2", "training.per_device_train_batch_size=8",
                 "training.num_generations=4", "training.num_generations_eval=4", "training.logging_steps=1",
                 "training.bf16=false", "training.log_rollouts_every=1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(max(lengths) == LIMIT for _, lengths, _ in batches)  # every batch had a long prompt, cut to 40
    train_batches = [long // 4 for mode, _, long in batches if mode == "train"]  # an epoch: each row once
    assert len(train_batches) == 2 and sum(train_batches) == 2
    steps = [r for r in rows if "reward" in r]
    assert [(r["step"], r["truncated_prompts"], r["truncated_prompt_tokens"]) for r in steps] == \
        [(s, n, 21 * n) for s, n in zip((1, 2), train_batches)]
    evals = [r for r in rows if "eval_reward" in r]
    assert [(r["step"], r["eval_truncated_prompts"], r["eval_truncated_prompt_tokens"]) for r in evals] == \
        [(0, 2, 42), (2, 2, 42)]
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:") and "max_length" in line]
    assert said == [f"note: 2 of 4 train prompts sampled longer than data.max_length={LIMIT} tokens were cut from "
                    "the left (42 tokens dropped; logged as truncated_prompts); raise data.max_length to keep them "
                    "whole."]
    shown = [json.loads(line) for line in (out / "rollouts" / "step-1.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in shown} <= {f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in
                                              questions[::2]} | {f"then answer. {q[28:]}<|im_end|>\n<|im_start|>"
                                                                 "assistant\n" for q in questions[1::2]}
