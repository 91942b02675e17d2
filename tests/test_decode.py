"""The graph decoder (fai_rl.decode) samples what HF generate samples: greedy tokens equal generate's on the
same weights and left-padded prompts (stop tokens and padding included), log-probs equal the softmax of generate's
logits, and temperature / top-k / top-p draws follow the distribution of transformers' own logits warpers. On the
CPU the step runs eagerly; tests/test_gpu.py replays it as a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from fai_rl.decode import GraphDecoder, Knobs, draw, install

PROMPTS = [[5, 9, 14, 3, 7, 22, 8], [11, 4], [30, 2, 19, 6], [1]]
PAD = 0


def _model(attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         initializer_range=0.4, pad_token_id=PAD)  # wide logits: greedy without near-ties
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()


def _batch(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    return ids, (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()


def _hf_greedy(model, ids, mask, max_new: int, stops: list[int]):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=stops, pad_token_id=PAD,
                              output_logits=True, return_dict_in_generate=True)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("attn,fuse", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_greedy_tokens_and_logprobs_equal_hf_generate(attn, fuse):
    model = _model(attn)
    ids, mask = _batch(PROMPTS)
    free, _ = _hf_greedy(model, ids, mask, 12, stops=[47])
    stop = int(free[1, 4])  # a token row 1 draws: with it as the stop token, rows stop at different steps
    expected, logits_btv = _hf_greedy(model, ids, mask, 12, stops=[stop])
    decoder = GraphDecoder(model, graphs=False, fuse=fuse)  # fuse: q/k/v, gate/up as one matmul (CUDA's default)
    tokens_bt, logprobs_bt, lengths_b = decoder.generate(ids, mask, 12, Knobs(0.0), [stop], PAD)
    assert len(decoder.fused_weights()) == (4 if fuse else 0)  # 2 layers x (attention, MLP)
    assert tokens_bt.tolist() == expected.tolist()
    assert (expected == stop).any(dim=1).sum() >= 1 and lengths_b[1] <= 5  # the stop token and padding were met
    width = expected.shape[1]
    reference_bt = torch.log_softmax(logits_btv.float(), -1).gather(-1, expected[..., None])[..., 0]
    real_bt = torch.arange(width)[None] < lengths_b[:, None]
    assert torch.allclose(logprobs_bt[real_bt], reference_bt[real_bt], atol=1e-5)


def test_a_reused_decoder_gives_the_same_tokens_for_a_new_batch():
    model = _model()
    decoder = GraphDecoder(model, graphs=False)
    decoder.generate(*_batch(PROMPTS), 10, Knobs(0.0), [], PAD)
    ids, mask = _batch(PROMPTS[1:])
    expected, _ = _hf_greedy(model, ids, mask, 10, stops=[])
    assert decoder.generate(ids, mask, 10, Knobs(0.0), [], PAD)[0].tolist() == expected.tolist()


def test_installed_generate_returns_what_trl_reads_from_hf_generate():
    """TRL's GRPOTrainer calls model.generate(input_ids=, attention_mask=, generation_config=) and slices the ids."""
    from transformers import GenerationConfig

    model = _model()
    ids, mask = _batch(PROMPTS)
    expected = model.generate(input_ids=ids, attention_mask=mask,
                              generation_config=GenerationConfig(max_new_tokens=9, do_sample=False, pad_token_id=PAD,
                                                                 eos_token_id=[3]))
    install(model, GraphDecoder(model, graphs=False))
    config = GenerationConfig(max_new_tokens=9, do_sample=False, pad_token_id=PAD, eos_token_id=[3])
    assert model.generate(input_ids=ids, attention_mask=mask, generation_config=config).tolist() == expected.tolist()
    beams = GenerationConfig(max_new_tokens=4, num_beams=2, do_sample=False, pad_token_id=PAD)
    assert model.generate(input_ids=ids, attention_mask=mask, generation_config=beams).shape[1] <= ids.shape[1] + 4


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 0.8), (1.3, 5, 0.9),
                                                             (0.5, 3, 1.0)])
def test_draws_follow_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(1)
    logits_v = torch.randn(12) * 1.5
    warped = TemperatureLogitsWarper(temperature)(None, logits_v[None].clone())
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected_v = torch.softmax(warped[0], -1)
    draws = 200_000
    tokens_b, logprobs_b = draw(logits_v.expand(draws, -1).clone(), Knobs(temperature, top_p, top_k))
    seen_v = torch.bincount(tokens_b, minlength=12).float() / draws
    assert (seen_v - expected_v).abs().sum() / 2 < 0.01  # total variation distance
    assert seen_v[expected_v == 0].sum() == 0  # nothing outside the kept set is ever drawn
    assert torch.allclose(logprobs_b, torch.log_softmax(logits_v / temperature, -1)[tokens_b], atol=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_a_lora_model_samples_through_the_decoder_from_merged_weights_as_hf_generate_does(fuse):
    """GRPO's set-up: the decoder installed on a PEFT model, then LoRA merged into side buffers for each call (with
    fused groups: q/k/v merged into the group's buffer, k_proj having no adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig

    from fai_rl.backends.local.grpo import sample_with_merged_lora

    peft_model = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: its delta changes what greedy decoding picks
    ids, mask = _batch(PROMPTS)
    config = GenerationConfig(max_new_tokens=8, do_sample=False, pad_token_id=PAD, eos_token_id=[3])
    expected = peft_model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    with peft_model.disable_adapter():
        base_only = peft_model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert expected.tolist() != base_only.tolist()
    decoder = install(peft_model, GraphDecoder(peft_model, graphs=False, fuse=fuse))
    sample_with_merged_lora(peft_model, decoder)
    for _ in range(2):  # the second call re-merges into the same buffers
        assert peft_model.generate(input_ids=ids, attention_mask=mask, generation_config=config).tolist() == \
            expected.tolist()
    assert len(decoder.fused_weights()) == (4 if fuse else 0)
    # outside sampling the adapter is on again and the model computes what it did
    out = peft_model(input_ids=ids, attention_mask=mask).logits
    with peft_model.disable_adapter():
        assert not torch.allclose(out, peft_model(input_ids=ids, attention_mask=mask).logits)
