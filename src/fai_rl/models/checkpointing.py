"""Per-layer activation checkpointing: when `training.gradient_checkpointing: null` resolves to on (the run would not
fit the GPU with every activation kept), checkpoint only as many decoder layers as the memory needs.

Checkpointing every layer keeps one hidden state per layer and recomputes each layer's forward in the backward pass
(about a fifth of a long-context step: Qwen3-0.6B at 131,072 tokens on an H200 peaks at 17 GiB of 141 with every
layer checkpointed). The memory left over is spent keeping the activations of the last layers instead, so their
forward is not recomputed: the layers are the same computation either way (the loss and gradients do not change),
only the peak memory and the time move. An explicit `training.gradient_checkpointing: true` checkpoints every layer,
as transformers does.
"""

from __future__ import annotations

import functools

from fai_rl.config.schema import Recipe

BUDGET = 0.8  # of the GPU's memory, as use_gradient_checkpointing reckons


def layers_to_keep(total_bytes: float, state: float, activations: float, logits: float, layers: int,
                   saved_per_layer: float) -> int:
    """How many layers can keep their activations within BUDGET of total_bytes, the rest checkpointed: each
    checkpointed layer holds its input (saved_per_layer), each kept one its whole activations (activations /
    layers), and one more layer's activations are live while a checkpointed layer is recomputed."""
    per_layer = activations / layers
    if per_layer <= saved_per_layer:
        return layers
    room = BUDGET * total_bytes - state - logits - layers * saved_per_layer - per_layer
    return max(0, min(layers, int(room // (per_layer - saved_per_layer))))


def uncheckpointed_layers(recipe: Recipe) -> int:
    """Layers to leave without checkpointing in a run whose null gradient_checkpointing resolved to on; 0 otherwise
    (an explicit true or false, no CUDA GPU)."""
    from fai_rl.models.load import estimate_parts, use_gradient_checkpointing

    if recipe.training.gradient_checkpointing is not None or not use_gradient_checkpointing(recipe):
        return 0
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    p = estimate_parts(recipe)
    keep = layers_to_keep(total, p["state"], p["activations"], p["logits"], p["layers"], p["tokens"] * p["hidden"] * 2)
    return min(keep, p["layers"] - 1)  # all of them: use_gradient_checkpointing would have said off


def keep_activations(model, count: int) -> int:
    """Turn checkpointing off on the last `count` decoder layers of a model transformers has enabled it on; returns
    how many layers stay checkpointed."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for block in blocks[len(blocks) - count:] if count else []:
        block.__class__ = _kept(type(block))
    return len(blocks) - min(count, len(blocks))


@functools.cache
def _kept(cls: type) -> type:
    """`cls` with checkpointing off for good: TRL turns checkpointing off around generation and back on for every
    layer after it (trl.models.utils.disable_gradient_checkpointing), which would undo a plain flag. A class-level
    property wins over the instance attribute transformers sets, and ignores the writes."""
    return type(cls.__name__, (cls,), {"gradient_checkpointing": property(lambda self: False, lambda self, value: None),
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def add_partial_checkpointing(trainer, recipe: Recipe) -> None:
    """Give an HF/TRL trainer the PartialCheckpointing callback where uncheckpointed_layers finds room."""
    if keep := uncheckpointed_layers(recipe):
        trainer.add_callback(partial_checkpointing_callback(keep))


def partial_checkpointing_callback(count: int):
    """A TrainerCallback applying keep_activations once transformers' Trainer has enabled checkpointing (it does so
    inside train(), before on_train_begin)."""
    from transformers import TrainerCallback

    class PartialCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            total = sum(1 for _ in _blocks(model))
            left = keep_activations(model, count)
            if state.is_world_process_zero:
                print(f"activation checkpointing: {left} of {total} layers (the memory estimate leaves room to keep "
                      f"the activations of the last {total - left}; training.gradient_checkpointing=true "
                      "checkpoints all)", flush=True)

    return PartialCheckpointing()


def _blocks(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    return (m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
