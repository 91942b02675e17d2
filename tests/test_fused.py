"""Fused projections for sampling (fai_rl.fused_projections): q/k/v and gate/up as one matmul each give the unfused
model's logits with fewer matmuls, follow weight changes between calls, merge LoRA deltas, and leave the model's
own forward untouched outside the context. (Greedy decoding through them: tests/test_decode.py.)"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fai_rl.fused_projections import DecodeWeights


class _CountLinear(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _model(kind: str = "qwen3"):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    config = Qwen3Config(**shape) if kind == "qwen3" else LlamaConfig(**shape, attention_bias=True, mlp_bias=True)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", ["qwen3", "llama-with-biases"])
def test_fused_groups_give_the_same_logits_follow_the_weights_and_only_inside_the_context(kind):
    model = _model(kind)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        weights = DecodeWeights.of(model)
        assert len(weights) == 4 and DecodeWeights.of(model) is weights  # 2 layers x (q/k/v, gate/up), made once
        with weights, _CountLinear() as counted:
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
        assert counted.calls == 2 * 4 + 1  # per layer: qkv, o, gate-up, down; plus lm_head
        # a weight changed between calls (an RL step): entering again copies it in
        model.model.layers[0].self_attn.k_proj.weight.mul_(2.0)
        changed = model(input_ids=ids).logits
        assert not torch.allclose(changed, expected)
        with weights:
            assert torch.allclose(model(input_ids=ids).logits, changed, atol=1e-5)
        with _CountLinear() as outside:
            model(input_ids=ids)
        assert outside.calls == 2 * 7 + 1  # outside the context the model runs its own linears
    assert model.state_dict().keys() == _model(kind).state_dict().keys()  # checkpoints see the model unchanged


def test_lora_deltas_are_merged_into_the_group_buffers():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        ids = torch.randint(0, 64, (2, 9))
        adapted = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
        weights = DecodeWeights.of(peft_model)
        assert len(weights) == 4
        layer = peft_model.base_model.model.model.layers[0]
        x = torch.randn(3, 32)
        alone = layer.self_attn.q_proj(x), layer.mlp.up_proj(x)
        with weights:  # adapters on: their delta is in the buffer, the group's matmul replaces the adapter's
            assert torch.allclose(peft_model(input_ids=ids).logits, adapted, atol=1e-5)
            # a member called out of order (not right after gate_proj on the same input) computes from its own
            # rows of the buffer, its adapter's delta included
            assert torch.allclose(layer.mlp.up_proj(x), alone[1], atol=1e-5)
            assert torch.allclose(layer.self_attn.q_proj(x), alone[0], atol=1e-5)
        with peft_model.disable_adapter():
            with weights:  # adapters off (the reference model's view)
                assert torch.allclose(peft_model(input_ids=ids).logits, base, atol=1e-5)
            weights.merge_lora = True  # GRPO's sampling: adapters off for the call, the adapted policy wanted
            with weights:
                assert torch.allclose(peft_model(input_ids=ids).logits, adapted, atol=1e-5)
        assert torch.allclose(peft_model(input_ids=ids).logits, adapted)  # outside: the PEFT forward as before
