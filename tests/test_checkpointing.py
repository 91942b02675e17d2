"""Per-layer activation checkpointing (fai_rl.models.checkpointing): the plan's arithmetic, and that leaving some
layers uncheckpointed changes neither the loss nor a single gradient (it only moves memory and time).

The speed and memory it buys are GPU numbers (docs/performance.md, "Long context"); here the exactness."""

from __future__ import annotations

import torch

from fai_rl.models.builtin import materialize_builtin_model
from fai_rl.models.checkpointing import keep_activations, layers_to_keep

GIB = 2**30


def test_the_plan_keeps_as_many_layers_as_the_budget_holds():
    # Qwen3-0.6B full fine-tune at 131,072 tokens on a 141 GiB GPU: 28 layers of ~7 GB activations each
    tokens, hidden, layers = 131072, 1024, 28
    activations = tokens * layers * 2 * 26624
    keep = layers_to_keep(150.75e9, 4.77e9, activations, 0.0, layers, tokens * hidden * 2)
    assert keep == 15
    assert layers_to_keep(150.75e9, 4.77e9, activations * 20, 0.0, layers, tokens * hidden * 2) == 0  # no room
    assert layers_to_keep(150.75e9, 4.77e9, 1e9, 0.0, layers, tokens * hidden * 2) == layers  # everything fits
    assert layers_to_keep(150.75e9, 4.77e9, activations, 0.0, layers, 1e10) == layers  # saving costs more


def _grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_partly_checkpointed_layers_give_the_same_loss_and_gradients():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(materialize_builtin_model("fai-rl/tiny"), dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    ids = torch.randint(3, model.config.vocab_size, (2, 24))
    plain_loss, plain = _grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = model.config.num_hidden_layers
    left = keep_activations(model, 2)
    assert left == layers - 2
    flags = [block.gradient_checkpointing for block in model.model.layers]
    assert flags == [True] * (layers - 2) + [False, False]  # the last layers keep their activations
    model.gradient_checkpointing_disable()  # what TRL does around generation, and then turns it back on
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert [block.gradient_checkpointing for block in model.model.layers] == flags
    part_loss, part = _grads(model, ids)
    assert torch.equal(plain_loss, part_loss) and plain.keys() == part.keys()
    for name in plain:
        torch.testing.assert_close(part[name], plain[name], rtol=0, atol=1e-6, msg=name)
