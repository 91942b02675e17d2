"""Fused projections (fai_rl.models.fused): q/k/v and gate/up as one matmul give the unfused model's outputs and
gradients (fp32), with fewer matmuls, and leave parameters, state dicts and the plain forward untouched."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fai_rl.models.fused import DecodeWeights, fuse, unfuse


class _CountLinear(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _model(kind: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    config = Qwen3Config(**shape) if kind == "qwen3" else LlamaConfig(**shape, attention_bias=True, mlp_bias=True)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _loss_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["qwen3", "llama-with-biases"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fused_training_forward_and_gradients_equal_the_unfused_model(kind, checkpointing):
    model = _model(kind).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 64, (3, 12))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with _CountLinear() as plain:
        logits, grads = _loss_and_grads(model, ids)
    assert fuse(model) == 4 and fuse(model) == 4  # 2 layers x (q/k/v, gate/up); a second call changes nothing
    with _CountLinear() as fused:
        fused_logits, fused_grads = _loss_and_grads(model, ids)
    assert torch.allclose(fused_logits, logits, atol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-5), name
    # per layer 7 linears unfused, 4 fused, plus lm_head (a checkpointed layer's recompute runs in autograd's
    # thread, where the counting mode is not on; the equal gradients above are what shows it ran fused too)
    assert (plain.calls, fused.calls) == (2 * 7 + 1, 2 * 4 + 1)
    assert model.state_dict().keys() == state.keys()  # checkpoints see the model unchanged
    unfuse(model)
    with _CountLinear() as again:
        _loss_and_grads(model, ids)
    assert again.calls == plain.calls


def test_decode_weights_follow_the_current_weights_and_only_inside_the_context():
    model = _model("qwen3").eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        weights = DecodeWeights(model)
        assert len(weights) == 4
        with weights, _CountLinear() as counted:
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
        assert counted.calls == 2 * 4 + 1
        # a weight changed between calls (an RL step): entering again copies it in
        model.model.layers[0].self_attn.k_proj.weight.mul_(2.0)
        changed = model(input_ids=ids).logits
        assert not torch.allclose(changed, expected)
        with weights:
            assert torch.allclose(model(input_ids=ids).logits, changed, atol=1e-5)
        with _CountLinear() as outside:
            model(input_ids=ids)
        assert outside.calls == 2 * 7 + 1  # outside the context the model runs its own linears


def test_groups_with_an_active_unmerged_adapter_are_not_fused_for_training():
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_model("qwen3"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    assert fuse(peft_model) == 2  # only the MLP groups: q_proj's adapter is trained


def test_sampling_from_a_model_fused_for_training_reads_the_buffers_then_hands_back_the_training_groups():
    """Full fine-tune RL: fuse() for the training passes, DecodeWeights for sampling between them."""
    model = _model("qwen3")
    ids = torch.randint(0, 64, (2, 9))
    fuse(model)
    weights = DecodeWeights(model)
    assert len(weights) == 4
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with weights:
            group = model.model.layers[0].self_attn.q_proj._fai_rl_fused
            assert group.weight_fn() is weights.groups[0][1]  # the buffer, not a cat per step
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    assert group.weight_fn() is not weights.groups[0][1]
    _, grads = _loss_and_grads(model, ids)
    assert grads["model.layers.0.self_attn.k_proj.weight"].abs().sum() > 0  # training groups back: grads flow
