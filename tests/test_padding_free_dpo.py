"""Padding-free DPO is exact: a batch's chosen and rejected sequences run as one row (fai_rl.backends.local.dpo_packed)
give every sequence the same per-token and summed completion log-probs, the same DPO loss, metrics and parameter
gradients as TRL's padded path on the same batch, for ChatML and Llama-3 templates, with the reference a frozen copy,
the adapter-disabled LoRA policy, or precomputed; and a tiny padding-free DPO run still learns."""

from __future__ import annotations

import json

import pytest
import torch
from test_padding_free import _model, _tokenizer

from fai_rl.backends.local.dpo_packed import PackedDPOTrainer, PackedPairs
from fai_rl.models import varlen

# ragged on purpose: prompts, chosen and rejected replies all of different lengths
PAIRS = [
    ("What is 2 + 3?", "5", "It is 6, I think."),
    ("Name a colour you like and say why.", "Blue, like the sky at noon over the sea.", "Red."),
    ("Say hi", "hi there", "no"),
    ("Which is larger, 7 or 9?", "9 is larger than 7.", "7"),
]


def _trainer(tmp_path, template: str, lora: bool, precompute: bool, loss_type: list[str], dtype=torch.float32):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    tok = _tokenizer(template)
    # saved and loaded from a path, as load_causal_lm does: TRL loads its frozen reference copy from the same path
    _model(len(tok), "sdpa").save_pretrained(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation=varlen.register(), dtype=dtype)
    seen = []  # the shape of every batch a model's embedding sees: packed runs must be one row of real tokens
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS]
    args = DPOConfig(output_dir=str(tmp_path / "run"), bf16=dtype == torch.bfloat16, report_to="none", max_length=512,
                     per_device_train_batch_size=len(PAIRS), loss_type=loss_type, precompute_ref_log_probs=precompute,
                     use_weighting=precompute)  # WPO's weights read a fifth per-token output (TRL fails it with sft)
    trainer = PackedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                               peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if lora else None)
    if trainer.ref_model is not None:
        trainer.ref_model.get_input_embeddings().register_forward_hook(
            lambda m, args, out: seen.append(tuple(args[0].shape)))
    return trainer, seen


def _fused(trainer, batch: dict):
    """The policy's fused-head forward the way DPOTrainer calls it."""
    kwargs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        return trainer.model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)


def _loss_metrics_grads(trainer, batch: dict):
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize(("template", "lora", "precompute", "loss_type"), [
    ("chatml", False, False, ["sigmoid", "ipo", "sft"]),  # frozen reference copy; losses reading completion lengths
    ("llama3", True, False, ["sigmoid"]),  # reference = the adapter-disabled policy
    ("llama3", False, True, ["sigmoid"]),  # reference log-probs precomputed (packed) at construction; WPO weights
])
def test_packed_pairs_give_the_padded_log_probs_loss_and_gradients(tmp_path, template, lora, precompute, loss_type):
    trainer, seen = _trainer(tmp_path, template, lora, precompute, loss_type)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    lengths = batch["attention_mask"].sum(dim=1)
    real = int(lengths.sum())
    assert len(set(lengths.tolist())) > 1 and real < batch["input_ids"].numel()  # ragged: the padded batch pads
    packed = batch["packed"]
    assert packed["cu_seq_lens"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert packed["position_ids"].shape == (1, real) and packed["max_length"] == int(lengths.max())
    padded = {k: v for k, v in batch.items() if k != "packed"}

    if precompute:  # the reference pass at construction ran packed, and matches the padded reference pass
        assert seen == [(1, real)]
        ref = trainer.compute_ref_log_probs(trainer.model, padded)
        for name, expected in zip(("ref_chosen_logps", "ref_rejected_logps"), ref, strict=True):
            assert torch.allclose(batch[name], expected, atol=1e-5), name

    with torch.no_grad():  # the policy leaves the reference, so rewards and margins are not all zero
        torch.manual_seed(1)
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()

    # per-token outputs in TRL's padded layout, and each sequence's summed completion log-prob
    out_padded, seen[:] = _fused(trainer, padded), []
    out_packed = _fused(trainer, batch)
    assert seen == [(1, real)]
    for name in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        if getattr(out_padded, name) is not None:
            assert torch.allclose(getattr(out_packed, name), getattr(out_padded, name), atol=1e-5), name
    assert torch.equal(out_packed.is_top1, out_padded.is_top1) and torch.equal(out_packed.label_mask,
                                                                               out_padded.label_mask)
    assert torch.allclose(out_packed.log_probs.sum(1), out_padded.log_probs.sum(1), atol=1e-5)

    # DPO loss, its metrics (rewards, logps, margins, accuracies, ...) and every trainable parameter's gradient
    loss_padded, metrics_padded, grads_padded = _loss_metrics_grads(trainer, padded)
    seen[:] = []
    loss_packed, metrics_packed, grads_packed = _loss_metrics_grads(trainer, batch)
    assert seen == [(1, real)] * (1 if precompute else 2)  # the policy, and the reference unless precomputed
    assert torch.allclose(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)
    assert metrics_packed.keys() == metrics_padded.keys() >= {"rewards/chosen", "rewards/rejected", "logps/chosen",
                                                              "logps/rejected", "rewards/margins", "rewards/accuracies"}
    assert abs(metrics_padded["rewards/margins"]) > 1e-4  # a real check, not 0 == 0
    for name, value in metrics_padded.items():
        assert metrics_packed[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    for name, g in grads_padded.items():
        assert torch.allclose(grads_packed[name], g, atol=1e-6, rtol=1e-4), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_packed_pairs_run_the_varlen_kernel_and_match_the_padded_batch_on_a_gpu(tmp_path, monkeypatch):
    import functools

    import torch.nn.attention.varlen as torch_varlen

    assert varlen.available(), "this torch has no torch.nn.attention.varlen"
    calls = []
    kernel = torch_varlen.varlen_attn

    @functools.wraps(kernel)
    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch_varlen, "varlen_attn", counted)
    varlen.varlen_kernel.cache_clear()
    try:
        trainer, _ = _trainer(tmp_path, "llama3", True, False, ["sigmoid"], dtype=torch.bfloat16)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))]))
        padded = {k: v for k, v in batch.items() if k != "packed"}
        out_padded, out_packed = _fused(trainer, padded), _fused(trainer, batch)
    finally:
        varlen.varlen_kernel.cache_clear()
    assert len(calls) == trainer.model.config.num_hidden_layers  # every layer of the packed forward, and only it
    assert torch.allclose(out_packed.log_probs, out_padded.log_probs, atol=5e-2)  # bf16 kernels
    sums_padded, sums_packed = out_padded.log_probs.sum(1), out_packed.log_probs.sum(1)
    assert torch.allclose(sums_packed, sums_padded, rtol=2e-2, atol=5e-2), (sums_packed, sums_padded)


def test_a_batch_of_equal_lengths_stays_an_ordinary_batch():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collate = PackedPairs(DataCollatorForPreference(pad_token_id=0))
    even = collate([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}])
    assert "packed" not in even and even["input_ids"].shape == (2, 3)
    ragged = collate([{"prompt_ids": [1, 2], "chosen_ids": [3, 5], "rejected_ids": [4]}])
    assert ragged["packed"]["index"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert ragged["packed"]["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]


def test_a_padding_free_dpo_run_learns(tmp_path, monkeypatch):
    """The DPO quickstart (its digit pairs are 36 or 37 tokens: ragged batches) for 20 steps with padding_free on."""
    from conftest import ROOT

    from fai_rl.backends.local import dpo_packed
    from fai_rl.cli.train import main

    packed_calls = []
    run_packed = dpo_packed._packed_call
    monkeypatch.setattr(dpo_packed, "_packed_call", lambda *a, **kw: packed_calls.append(1) or run_packed(*a, **kw))
    out = tmp_path / "dpo"
    assert main(["--recipe", str(ROOT / "recipes" / "quickstart" / "dpo.yaml"), f"training.output_dir={out}",
                 "training.padding_free=true", "training.max_steps=20", "training.eval_steps=20",
                 "training.logging_steps=10", "training.per_device_eval_batch_size=66"]) == 0
    assert len(packed_calls) >= 2 * 20  # policy and reference, every step (and the evaluations)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_rewards/margins" in r]
    assert [r["step"] for r in evals] == [0, 20]
    first, last = evals
    assert first["eval_rewards/margins"] == 0 and first["eval_rewards/accuracies"] == 0  # policy = reference
    # 20 steps from the reference: margin 0.023, accuracy 0.557, eval loss 4.79 -> 3.68 on a 2-core AVX-512/AMX Xeon
    # (accuracy > 0.7 on the machine this test was written on: fai-rl/tiny-sft is built per machine)
    assert last["eval_rewards/margins"] > 0.01 and last["eval_rewards/accuracies"] > 0.5, evals
    assert last["eval_loss"] < 0.85 * first["eval_loss"]
    train = [r for r in rows if "rewards/margins" in r]
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]


def test_pairs_cut_counts_what_trls_dpo_truncates_and_leaves_out():
    """fai_rl.backends.local.dpo.pairs_cut on TRL-tokenised columns: keep_start cuts prompt + reply to max_length;
    a pair whose prompt alone fills it is gone from TRL's dataset (left out)."""
    from types import SimpleNamespace

    from datasets import Dataset

    from fai_rl.backends.local.dpo import pairs_cut

    def ids(n):
        return list(range(n))

    train = Dataset.from_dict({"prompt_ids": [ids(4), ids(6), ids(3)], "chosen_ids": [ids(2), ids(7), ids(9)],
                               "rejected_ids": [ids(3), ids(1), ids(2)]})
    evaluation = Dataset.from_dict({"prompt_ids": [ids(9)], "chosen_ids": [ids(1)], "rejected_ids": [ids(1)]})
    cuts = pairs_cut(SimpleNamespace(train_dataset=train, eval_dataset=evaluation), rows=6, max_length=8)
    # 4+2, 4+3 fit; 6+7 -> 5 over, 6+1 fits; 3+9 -> 4 over, 3+2 fits; 9+1, 9+1 -> 2 + 2 over; 2 pairs left out
    assert cuts.metrics() == {"truncated_pairs": 3.0, "truncated_pair_tokens": 13.0, "truncated_pairs_left_out": 2.0}
    assert "3 of 4 pairs longer than data.max_length=8 tokens were cut from the right (13 tokens dropped; logged as " \
           "truncated_pairs); 2 more left out whole (truncated_pairs_left_out)" in cuts.line()
