"""skyrl-tx 0.3.0's engine (`python -m tx.tinker.engine`) with three fixes the test suite needs to see a Tinker run
resume exactly. The server's API process starts its engine through our `uv` stand-in, which runs this file instead.

1. Requests run in the order a client sent them. The engine loop takes, from one look at the queue, the model passes
   it may batch (those before their model's first pending optim_step / load) and then *every* pending single request
   (optim_step, save, load, ...). A client that queues one step ahead (fb N, optim N, fb N+1, optim N+1: our SFT/DPO
   loops, tinker-cookbook's) thus had optim N+1 run before fb N+1: "No accumulated gradients, skipping optimizer
   step", and fb N+1's gradients went into step N+2's update instead. Whether it happened depended on timing
   (measured: 10 skipped steps in 3 x 10 steps, losses of two identical runs apart from step 2 on, a resumed run's
   loss 2.9e-4 to 9% off). Here a single request waits while a model pass of its model sent before it is not run
   in the same round.
2. A LoRA slot is handed over clean. Gradients accumulated in a slot and not yet applied (a client killed between
   forward_backward and optim_step; fix 1's lost step) stayed there after the session ended and were added to the
   first update of the next session given that slot: now the slot's accumulator is reset when a model is created
   or deleted.
3. A sampler checkpoint is a snapshot. skyrl-tx samples `tinker://<model>/sampler_weights/<name>` in the training
   model's own slot: it loads the saved weights over the training weights (when another checkpoint was loaded last)
   or samples whatever the slot holds now (when it was this one: the weights saved, or those after the updates
   since). So a sampler on weights one step old (tinker.max_steps_off_policy) or a saved reference either sampled
   the live weights or undid the training. Here each sampler checkpoint in use gets a slot of its own (free slots
   only; the least recently used one is given up for a new sampler or a new training model).

Neither was the micro-batches' or the 8 slots' doing: with both fixes, three pairs of 6-step runs (pipelined as
our loops are, 8 slots, micro-batches of 16) and their resumes from step 2 gave bit-identical losses.

Usage (what the `uv` stand-in runs): python engine.py ENGINE_ARGS...
"""

from __future__ import annotations

import sys
from collections import OrderedDict

from sqlmodel import select

from tx.layers.lora import init_lora_adapter
from tx.tinker import engine as tx_engine
from tx.tinker import types
from tx.tinker.backends import jax as tx_jax
from tx.tinker.db_models import FutureDB, RequestStatus
from tx.utils.log import logger
from tx.utils.models import load_lora_checkpoint

import jax

Engine, Backend = tx_engine.TinkerEngine, tx_jax.JaxBackendImpl
MODEL_PASSES = (types.RequestType.FORWARD_BACKWARD, types.RequestType.FORWARD)


# ---- 1. single requests never overtake a model pass of their model

_find_batchable_model_passes = Engine.find_batchable_model_passes
_find_single_requests = Engine.find_single_requests


def find_batchable_model_passes(self, session, request_type):
    found = _find_batchable_model_passes(self, session, request_type)
    self._taken_this_round = getattr(self, "_taken_this_round", set()) | {int(r) for r in found}
    return found


def find_single_requests(self, session):
    """The engine's single requests, less those sent after a model pass of the same model that this round leaves
    waiting (it runs the batched passes first, then these). Looked up after them, so every pass sent before the
    last request found is seen."""
    singles = _find_single_requests(self, session)
    taken, self._taken_this_round = getattr(self, "_taken_this_round", set()), set()
    waiting = session.exec(
        select(FutureDB.model_id, FutureDB.request_id)
        .where(FutureDB.status == RequestStatus.PENDING)
        .where(FutureDB.request_type.in_(MODEL_PASSES))
    ).all()
    first_waiting: dict[str, int] = {}
    for model_id, request_id in waiting:
        if request_id not in taken:
            first_waiting[model_id] = min(request_id, first_waiting.get(model_id, request_id))
    return {r: v for r, v in singles.items() if int(r) < first_waiting.get(v[0], int(r) + 1)}


Engine.find_batchable_model_passes = find_batchable_model_passes
Engine.find_single_requests = find_single_requests


# ---- 2. and 3. slots: clean accumulators, sampler checkpoints in slots of their own

_create_model, _delete_model = Backend.create_model, Backend.delete_model


def _sampler_slots(self) -> OrderedDict:
    if not hasattr(self, "_samplers"):
        self._samplers = OrderedDict()  # (model_id, checkpoint_id) -> adapter index, least recently used first
    return self._samplers


def _reset_accumulator(self, index: int) -> None:
    with jax.set_mesh(self.mesh):
        self.accumulated_grads = self.accumulated_grads.reset_adapter(jax.numpy.int32(index))


def _drop_sampler(self, key) -> None:
    # the slot keeps the weights until it is taken again (init_lora_adapter then sets all of it): nothing points at it
    _sampler_slots(self).pop(key)


def _free_slot(self, keep=()) -> int | None:
    """The lowest slot no model and no sampler holds, giving up the least recently used sampler if need be."""
    samplers = _sampler_slots(self)
    while True:
        used = {m.adapter_index for m in self.models.values()} | set(samplers.values())
        free = sorted(set(range(1, self.config.max_lora_adapters)) - used)
        if free:
            return free[0]
        victim = next((k for k in samplers if k not in keep), None)
        if victim is None:
            return None
        _drop_sampler(self, victim)


def create_model(self, model_id, lora_config):
    # skyrl-tx takes the lowest slot no model holds: a sampler there gives it up
    free = set(range(1, self.config.max_lora_adapters)) - {m.adapter_index for m in self.models.values()}
    for key in [k for k, i in _sampler_slots(self).items() if free and i == min(free)]:
        _drop_sampler(self, key)
    _create_model(self, model_id, lora_config)
    _reset_accumulator(self, self.models[model_id].adapter_index)


def delete_model(self, model_id):
    index = self.models[model_id].adapter_index if model_id in self.models else None
    _delete_model(self, model_id)
    if index is not None:
        _reset_accumulator(self, index)
    for key in [k for k in _sampler_slots(self) if k[0] == model_id]:
        _drop_sampler(self, key)


def load_sampler_weights(self, prepared_batch):
    samplers = _sampler_slots(self)
    wanted = {(m, c) for m, c in zip(prepared_batch.all_model_ids, prepared_batch.all_checkpoint_ids) if m}
    indices = []
    for model_id, checkpoint_id, path in zip(prepared_batch.all_model_ids, prepared_batch.all_checkpoint_ids,
                                              prepared_batch.all_checkpoint_paths):
        if not model_id:
            indices.append(0)  # the base model
            continue
        key = (model_id, checkpoint_id)
        if key not in samplers:
            index = _free_slot(self, keep=wanted)
            if index is None:
                raise ValueError(f"no free LoRA slot to sample {checkpoint_id} of {model_id} in "
                                 f"(all {self.config.max_lora_adapters - 1} hold models or samplers of this batch)")
            config = self.models[model_id].lora_config
            with jax.set_mesh(self.mesh):
                init_lora_adapter(self.model, index, config)
                load_lora_checkpoint(self.model, config, index, tx_jax.AnyPath(path))
            samplers[key] = index
            logger.info(f"Loaded sampler checkpoint {checkpoint_id} of {model_id} into slot {index}")
        samplers.move_to_end(key)
        indices.append(samplers[key])
    return indices


_save_sampler_checkpoint = Backend.save_sampler_checkpoint


def save_sampler_checkpoint(self, output_path, model_id, persist=True):
    _save_sampler_checkpoint(self, output_path, model_id, persist)
    key = (model_id, output_path.name.removesuffix(".tar.gz"))
    if key in _sampler_slots(self):  # saved again under its name: the next sample loads the new weights
        _drop_sampler(self, key)


Backend.create_model, Backend.delete_model = create_model, delete_model
Backend.load_sampler_weights, Backend.save_sampler_checkpoint = load_sampler_weights, save_sampler_checkpoint


if __name__ == "__main__":
    sys.argv[0] = "tx.tinker.engine"
    tx_engine.main()
