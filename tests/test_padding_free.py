"""Padding-free SFT is exact: a batch flattened into one row (position ids restarting per example, TRL's padding-free
collator, attention kept inside each example by transformers' packed-sequence mask) gives every example the same
loss and the same gradients as the padded batch, for ChatML and Llama-3 templates and every loss_on mode."""

from __future__ import annotations

import pytest
import torch
from test_data import LLAMA3_SPECIALS, LLAMA3_TEMPLATE, _load_tiny_tokenizer

from fai_rl.data.tokenize import IGNORE, tokenize_sft
from fai_rl.data.formats import SFTExample

CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "5"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky at noon."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}],
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
]


def _tokenizer(template: str):
    tok = _load_tiny_tokenizer()
    if template == "llama3":
        tok.add_tokens(LLAMA3_SPECIALS, special_tokens=True)
        tok.chat_template = LLAMA3_TEMPLATE
        tok.eos_token = "<|eot_id|>"
    return tok


def _model(vocab: int, attn: str, device: str = "cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM, Qwen3Config

    from fai_rl.models import varlen

    if attn == varlen.ATTENTION:
        varlen.register()
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype).to(device)


def _token_losses(model, batch: dict) -> torch.Tensor:
    """Per-token next-token NLL (0 where the label is ignored), the way the causal-LM loss shifts labels."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")


@pytest.mark.parametrize(("template", "loss_on", "attn"), [
    *((template, loss_on, "sdpa") for template in ("chatml", "llama3")
      for loss_on in ("assistant", "last_assistant", "completion", "all")),
    ("chatml", "assistant", "eager"),
    ("llama3", "last_assistant", "fai_rl_varlen"),  # ours: on a CPU it is SDPA with transformers' packed mask
])
def test_a_padding_free_batch_equals_the_padded_batch(template, loss_on, attn):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = _tokenizer(template)
    rows = [tokenize_sft(SFTExample(messages=chat), tok, loss_on, 512) for chat in CHATS]
    rows.append(tokenize_sft(SFTExample(text="plain text rows train on every token"), tok, loss_on, 512))
    features = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    lengths = [len(r.input_ids) for r in rows]
    assert len(set(lengths)) > 1  # ragged: the padded batch really pads
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(features)
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(features)
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    # what the trainer hands the model: the rows' boundaries too (read by varlen kernels, ignored by SDPA)
    packed = {k: packed[k] for k in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                     "max_length_q", "max_length_k")}

    model = _model(len(tok), attn)
    per_padded = _token_losses(model, padded)
    per_packed = _token_losses(model, packed)[0]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        # the same loss-carrying tokens, the same loss on each (the last token of an example predicts nothing)
        assert torch.allclose(per_packed[start : start + n], per_padded[i, :n], atol=1e-5), (i, loss_on)
    carried = int((padded["labels"][:, 1:] != IGNORE).sum())
    assert carried == int((per_packed != 0).sum()) > 0

    # the loss the trainer minimises (sum over the batch's loss tokens / their number) and its gradients
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        (_token_losses(model, batch).sum() / carried).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6, rtol=1e-4), name


def test_padding_free_resolves_on_only_where_a_varlen_kernel_exists(tmp_path):
    from conftest import ROOT

    from fai_rl.config.load import load_recipe
    from fai_rl.models.load import use_padding_free

    recipe = ROOT / "recipes" / "quickstart" / "sft.yaml"
    assert use_padding_free(load_recipe(str(recipe))) is False  # this CPU: masked attention would be slower
    assert use_padding_free(load_recipe(str(recipe), ["training.padding_free=true"])) is True
    from fai_rl.errors import RecipeError

    dpo = ROOT / "recipes" / "quickstart" / "dpo.yaml"  # DPO packs its pairs (tests/test_padding_free_dpo.py)
    assert use_padding_free(load_recipe(str(dpo))) is False
    assert use_padding_free(load_recipe(str(dpo), ["training.padding_free=true"])) is True
    with pytest.raises(RecipeError, match="training.padding_free: training.algorithm grpo does not read it"):
        load_recipe(str(ROOT / "recipes" / "quickstart" / "grpo.yaml"), ["training.padding_free=true"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_varlen_kernel_gives_the_padded_batch_result_on_a_gpu():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from fai_rl.models import varlen

    assert varlen.available(), "this torch has no torch.nn.attention.varlen"
    tok = _tokenizer("chatml")
    rows = [tokenize_sft(SFTExample(messages=chat), tok, "assistant", 512) for chat in CHATS * 3]
    features = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]
    lengths = [len(r.input_ids) for r in rows]
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(features)
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(features)
    to = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in packed.items() if k != "seq_idx"}
    padded = {k: v.cuda() for k, v in padded.items()}
    reference = _model(len(tok), "sdpa", "cuda", torch.bfloat16)
    model = _model(len(tok), varlen.ATTENTION, "cuda", torch.bfloat16)
    model.load_state_dict(reference.state_dict())
    per_padded = _token_losses(reference, padded)
    per_packed = _token_losses(model, to)[0]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        assert torch.allclose(per_packed[start : start + n], per_padded[i, :n], atol=2e-2), i  # bf16 kernels


def test_a_batch_of_equal_rows_stays_an_ordinary_batch_and_a_ragged_one_goes_padding_free():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from fai_rl.backends.local.sft import PaddedWhenEven

    collate = PaddedWhenEven(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    even = collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9, 10], "labels": [8, 9, 10]}])
    assert even["input_ids"].shape == (2, 3) and bool(even["attention_mask"].all())  # no padding, SDPA's batch
    ragged = collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert ragged["input_ids"].shape == (1, 5) and ragged["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert collate.inner.padding_free  # restored after the even batch
