"""The local Tinker-API server (tests/tinker_harness/) through the real `tinker` SDK, on fai-rl/tiny-sft.

One test on purpose: every step builds on the one before, and under pytest-xdist separate tests could land on
separate workers, each starting its own server and paying its own JAX compiles. Sequences stay short and sampling
keeps one shape (num_samples, max_tokens) throughout, since each new length bucket or shape costs a compile.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.tinker

T = 120  # seconds: every future is waited on with a timeout (the SDK itself retries server errors without end)
RANK = 8
LR = 2e-3  # LoRA alpha is fixed at 32 on this server (scale 4 at rank 8): 1e-2 already oscillates


def test_sdk_round_trip_on_tiny_sft(tinker_server, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file
    from tinker import types
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fai_rl.models.builtin import materialize_builtin_model

    timings = {}

    def timed(name, fn):
        start = time.monotonic()
        out = fn()
        timings[name] = round(time.monotonic() - start, 2)
        return out

    server = tinker_server
    assert server.base_model == "fai-rl/tiny-sft"
    local_dir = materialize_builtin_model("fai-rl/tiny-sft")
    # The client side uses fai-rl's own copy of the model; the server's is the same model, config converted.
    tok = AutoTokenizer.from_pretrained(local_dir)
    assert (server.model_dir / "tokenizer.json").read_bytes() == (local_dir / "tokenizer.json").read_bytes()

    sc = server.service_client()
    tc = timed("create_lora_training_client", lambda: sc.create_lora_training_client(
        base_model=server.base_model, rank=RANK).result(timeout=T))
    run_id = tc.model_id

    # "What is 2 + 3?" -> "5<|im_end|>", the prompt through the chat template; loss on the answer only.
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    answer = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    tokens = prompt + answer
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
    datum = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights})

    def train_step():
        # Submit both before waiting on either (the hosted service works in clock cycles).
        fb = tc.forward_backward([datum], "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=LR))
        out = fb.result(timeout=T)
        opt.result(timeout=T)
        return out

    def forward_logprobs():
        return np.array(tc.forward([datum], "cross_entropy").result(timeout=T).loss_fn_outputs[0]["logprobs"].tolist())

    # -- SFT steps: loss:sum (summed over the answer tokens) falls. Not step by step: Adam's first step on a fresh
    # LoRA (B = 0) is a sign step of size LR on every B entry and can overshoot before the loss comes down.
    losses = []
    for step in range(4):
        out = timed(f"train_step_{step}", train_step)
        losses.append(out.metrics["loss:sum"])
        lp = out.loss_fn_outputs[0]["logprobs"].tolist()
        assert len(lp) == len(tokens) - 1
        assert math.isclose(-sum(p * w for p, w in zip(lp, weights)), losses[-1], rel_tol=1e-4)
    assert losses[-1] < losses[0] * 0.8, losses

    # -- save_state, train on, load_state_with_optimizer: the saved weights come back exactly.
    state = timed("save_state", lambda: tc.save_state("state-1").result(timeout=T))
    assert state.path == f"tinker://{run_id}/weights/state-1"
    saved = timed("forward", forward_logprobs)
    train_step()
    assert np.max(np.abs(forward_logprobs() - saved)) > 1e-4
    timed("load_state_with_optimizer", lambda: tc.load_state_with_optimizer(state.path).result(timeout=T))
    np.testing.assert_allclose(forward_logprobs(), saved, atol=1e-6)

    # -- sampler weights + a sampling client: samples with logprobs; stop at <|im_end|> when asked to.
    sampler = timed("save_weights_for_sampler", lambda: tc.save_weights_for_sampler("sampler-1").result(timeout=T))
    assert sampler.path == f"tinker://{run_id}/sampler_weights/sampler-1"
    scl = sc.create_sampling_client(model_path=sampler.path).result(timeout=T)
    params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=0, stop=[tok.eos_token_id])
    res = timed("sample", lambda: scl.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=2,
                                             sampling_params=params).result(timeout=T))
    assert len(res.sequences) == 2
    for seq in res.sequences:
        assert 1 <= len(seq.tokens) <= 4 and len(seq.logprobs) == len(seq.tokens)
        assert all(math.isfinite(x) and x <= 0 for x in seq.logprobs)
        if seq.stop_reason == "stop":
            assert seq.tokens[-1] == tok.eos_token_id
        else:
            assert seq.stop_reason == "length" and len(seq.tokens) == 4

    # -- compute_logprobs on the sampler weights = the training client's forward logprobs (same weights).
    lps = timed("compute_logprobs", lambda: scl.compute_logprobs(types.ModelInput.from_ints(tokens)).result(timeout=T))
    assert len(lps) == len(tokens) and lps[0] is None
    np.testing.assert_allclose(np.array(lps[1:]), saved, atol=1e-4)

    # -- a sampler is a snapshot (the harness's engine.py; skyrl-tx samples in the training slot): after an update it
    # still gives the saved weights' log-probs, and sampling it after another sampler leaves the training weights be
    train_step()
    trained = forward_logprobs()
    later = sc.create_sampling_client(
        model_path=tc.save_weights_for_sampler("sampler-2").result(timeout=T).path).result(timeout=T)
    for client, want in ((later, trained), (scl, saved)):
        lps = client.compute_logprobs(types.ModelInput.from_ints(tokens)).result(timeout=T)
        np.testing.assert_allclose(np.array(lps[1:]), want, atol=1e-4)
    np.testing.assert_allclose(forward_logprobs(), trained, atol=1e-6)

    # -- RestClient lists both checkpoints.
    rest = server.rest_client()
    listed = timed("list_checkpoints", lambda: rest.list_checkpoints(run_id).result(timeout=T))
    paths = {c.tinker_path: c.checkpoint_type for c in listed.checkpoints}
    assert paths[state.path] == "training" and paths[sampler.path] == "sampler"

    # -- Export the adapter the SDK 0.38 way and check it is a PEFT LoRA adapter that reproduces the server.
    export = timed("save_weights_external", lambda: tc.save_weights_external("final").result(timeout=T))
    assert export.path == f"tinker://{run_id}/external_weights/final"
    urls = rest.get_external_weights_urls(export.path).result(timeout=T).urls
    assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
    for name, url in urls.items():
        urllib.request.urlretrieve(url, tmp_path / name)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", RANK, 32.0)
    assert config["base_model_name_or_path"] == "fai-rl/tiny-sft"
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    # The server leaves target_modules null, and PEFT then falls back to its Qwen3 default (q_proj, v_proj only)
    # without a word: whoever downloads the adapter must name the modules the weights are for.
    assert config["target_modules"] is None
    config["target_modules"] = sorted({k.split(".")[-3] for k in keys})
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local_dir, dtype=torch.float32), tmp_path)
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]])).logits[0].float()
    local = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0].numpy()
    np.testing.assert_allclose(local, trained, atol=1e-4)

    print("tinker server timings (s):", timings)
