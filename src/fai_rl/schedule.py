"""How many optimizer steps a run makes, which training rows each step sees, and the learning rate at each step.

One definition for both backends. The local backend's trainers fix these numbers (HF Trainer, TRL), so this module
reproduces them and the Tinker backend asks it; the local backend's own loops (PPO, workflows) can ask it too.

Steps (training.max_steps wins when set, as in HF Trainer):
  * SFT, CPT, DPO (HF Trainer): ceil(num_train_epochs x ceil(rows / (per_device x GA x processes))). An epoch's last
    step takes the rows left (fewer), or drops the last incomplete micro-batch with dataloader_drop_last.
  * GRPO/GSPO (TRL's GRPOTrainer): a generation round samples per_device x steps_per_generation x processes
    completions, i.e. that / num_generations prompts; an epoch is rows // prompts-per-round whole rounds (the partial
    round is dropped, as TRL's RepeatSampler does); each round is num_iterations x steps_per_generation micro-steps,
    GA of them per optimizer step. So with the defaults (steps_per_generation = GA) a round is num_iterations steps.
  * PPO and workflows (fai-rl's own loops): ceil(num_train_epochs x rows / rows-per-step).

Data order, reshuffled every epoch from training.seed:
  * SFT, CPT, DPO: epoch e visits torch.randperm(rows, generator seeded training.seed + e) in order. This is HF
    Trainer's: accelerate swaps its RandomSampler for a SeedableRandomSampler (use_seedable_sampler, on by default)
    seeded with data_seed (= training.seed, backends/local/common.py) and the trainer calls set_epoch(e).
  * GRPO/GSPO: epoch e is the (e+1)-th torch.randperm of one generator seeded once with training.seed (TRL's
    RepeatSampler keeps its generator across epochs), cut into rounds.
  * PPO and workflows: consecutive slices of a stream of epochs, epoch e shuffled by random.Random(seed + e)
    (both backends' PPO and workflow loops ask Schedule.rows).
So on one process the Tinker backend trains on the same rows at the same step as the local backend.

Learning rate: transformers' own get_scheduler on a dummy optimizer, so every lr_scheduler_type and warm-up behaves as
on the local backend; the rate of step s (from 0) is the one HF Trainer applies (and logs) at its step s + 1.
"""

from __future__ import annotations

import functools
import math
import random

from fai_rl.algorithms import spec_of
from fai_rl.config.schema import Recipe
from fai_rl.errors import RecipeError


class Schedule:
    """The steps of one run, from the recipe and the number of training rows (prompts for RL, tasks for workflows)."""

    def __init__(self, recipe: Recipe, rows: int, processes: int = 1):
        t = recipe.training
        self.recipe, self.n, self.seed, self.processes = recipe, rows, t.seed, processes
        ga = t.gradient_accumulation_steps
        if recipe.workflow.type != "single":
            self.kind = "stream"
            self.batch = max(1, t.per_device_train_batch_size * ga // t.num_generations)
            per_epoch = rows / self.batch
        elif spec_of(t.algorithm).rollout_loop:  # PPO: one rollout batch of prompts a step
            self.kind = "stream"
            self.batch = t.per_device_train_batch_size * ga * processes
            per_epoch = rows / self.batch
        elif spec_of(t.algorithm).samples_groups:
            self.kind = "rounds"
            # steps_per_generation is read by the local backend only; elsewhere a round is GA micro-steps
            gen_steps = (t.steps_per_generation if t.backend == "local" else None) or ga
            self.batch = max(1, t.per_device_train_batch_size * gen_steps * processes // t.num_generations)
            self.rounds_per_epoch = max(1, rows // self.batch)
            self.micro_per_round = t.num_iterations * gen_steps
            self.micro_per_epoch = self.rounds_per_epoch * self.micro_per_round
            per_epoch = math.ceil(self.micro_per_epoch / ga)
        else:
            self.kind = "epochs"
            micro = math.ceil(rows / t.per_device_train_batch_size)
            if t.dataloader_drop_last:
                micro = rows // t.per_device_train_batch_size
            self.micro_per_epoch = max(1, math.ceil(micro / processes))
            self.batch = t.per_device_train_batch_size * ga * processes
            self.rows_per_epoch = min(rows, self.micro_per_epoch * t.per_device_train_batch_size * processes)
            per_epoch = max(1, math.ceil(self.micro_per_epoch / ga))
        self.steps_per_epoch = per_epoch
        self.total = t.max_steps if t.max_steps and t.max_steps > 0 else max(1, math.ceil(t.num_train_epochs * per_epoch))
        self._lr = _learning_rates(t.lr_scheduler_type, t.learning_rate, t.warmup_steps, self.total)

    def rows(self, step: int) -> list[int]:
        """Indices of the training rows of optimizer step `step` (from 0); for GRPO the prompts of its round."""
        t = self.recipe.training
        if self.kind == "stream":
            first = step * self.batch
            picked = [divmod(i, self.n) for i in range(first, first + self.batch)]
            return [_stream_order(self.n, self.seed + epoch)[pos] for epoch, pos in picked]
        epoch, k = divmod(step, int(self.steps_per_epoch))
        if self.kind == "rounds":
            order = _repeat_sampler_order(self.n, self.seed, epoch)
            r = self.round_of(step)[1]
            return [order[(r * self.batch + i) % self.n] for i in range(self.batch)]
        order = _trainer_order(self.n, self.seed + epoch)
        size = t.per_device_train_batch_size * t.gradient_accumulation_steps
        return order[k * size : min((k + 1) * size, self.rows_per_epoch)]

    def round_of(self, step: int) -> tuple[int, int]:
        """(epoch, round in epoch) of optimizer step `step`: the steps of one GRPO round share its completions;
        elsewhere every step is its own round."""
        if self.kind != "rounds":
            return step, 0
        epoch, k = divmod(step, int(self.steps_per_epoch))
        return epoch, k * self.recipe.training.gradient_accumulation_steps // self.micro_per_round

    def epoch(self, step: int) -> float:
        """HF Trainer's `epoch` once step `step` (from 0) is done: full epochs plus the share of micro-batches done."""
        if self.kind == "stream":
            return (step + 1) * self.batch / self.n
        epoch, k = divmod(step, int(self.steps_per_epoch))
        micro = min(self.micro_per_epoch, (k + 1) * self.recipe.training.gradient_accumulation_steps)
        return epoch + micro / self.micro_per_epoch

    def learning_rate(self, step: int) -> float:
        """The learning rate applied at optimizer step `step` (from 0), as the local backend applies and logs it."""
        return self._lr(step)


def _learning_rates(kind: str, peak: float, warmup: int, total: int):
    """lr(step) from transformers.get_scheduler (HF Trainer's call: warm-up steps, total steps, no extra kwargs)."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    try:
        scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"training.lr_scheduler_type: '{kind}' cannot be built by transformers ({e}); the local "
                          "backend fails the same way; choose another schedule.") from None
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas:  # LambdaLR (every schedule but reduce_lr_on_plateau): HF's lr = base_lr x lambda(steps done)
        return functools.lru_cache(maxsize=None)(lambda step: peak * lambdas[0](step))
    # reduce_lr_on_plateau: HF steps it with eval metrics; without them (and between evaluations) the rate stays put
    return lambda step: float(optimizer.param_groups[0]["lr"])


@functools.lru_cache(maxsize=4)
def _trainer_order(n: int, seed: int) -> list[int]:
    """accelerate's SeedableRandomSampler for one epoch: torch.randperm from a generator seeded data_seed + epoch."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


@functools.lru_cache(maxsize=4)
def _repeat_sampler_order(n: int, seed: int, epoch: int) -> list[int]:
    """TRL's RepeatSampler: one generator seeded once; epoch e is its (e+1)-th randperm."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.randperm(n, generator=generator)
    return torch.randperm(n, generator=generator).tolist()


@functools.lru_cache(maxsize=4)
def _stream_order(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order
