"""keep_lora_inputs_under_autocast: under autocast the LoRA input is no longer copied to fp32 and back; losses and
gradients stay bit-identical, and outside autocast PEFT's own cast still runs (a bf16 input meets fp32 adapters)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fai_rl.models.lora_inputs import keep_lora_inputs_under_autocast


class _CountCopies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.copies += 1
        return func(*args, **(kwargs or {}))


def _peft_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))  # fp32 adapters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def _step(model, ids):
    model.zero_grad()
    with _CountCopies() as counted:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, counted.copies


def test_no_fp32_round_trip_of_lora_inputs_under_autocast_and_the_same_gradients():
    model = _peft_model()
    assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32
    ids = torch.randint(0, 64, (2, 10))
    loss, grads, copies = _step(model, ids)
    assert keep_lora_inputs_under_autocast(model) == 14  # 7 adapted linears x 2 layers
    loss2, grads2, copies2 = _step(model, ids)
    assert torch.equal(loss, loss2)
    assert grads.keys() == grads2.keys() and all(torch.equal(grads[n], grads2[n]) for n in grads)
    assert copies2 <= copies - 2 * 14  # at least the input's round trip per adapted linear is gone
    with torch.no_grad():  # no autocast: PEFT's cast to the adapters' fp32 still happens, so this runs
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
