"""The range of every numeric recipe key, checked on every recipe whatever its algorithm reads.

The algorithm rules say why a value is wrong for the algorithm that reads it (and their message wins for a key they
cover); this table is the floor under them: an impossible value (a negative temperature, a NaN learning rate, a seed
numpy cannot take) is refused even in a recipe whose algorithm would never look at the key, so no recipe holds a value
that could never run. Every float key must also be finite (YAML's .nan / .inf). Keys are table keys (list items as
name[].key); a numeric key missing here is only checked to be finite.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

INF = math.inf
SEEDS = 2**32  # numpy's seeds are below this (HF set_seed seeds numpy too)

# key -> (low, low included, high, high included)
RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "model.lora_r": (0, False, INF, False),
    "model.lora_alpha": (0, False, INF, False),
    "model.lora_dropout": (0, True, 1, False),
    "data.datasets[].max_samples": (0, False, INF, False),
    "data.eval_datasets[].max_samples": (0, False, INF, False),
    "data.eval_split_ratio": (0, True, 1, False),
    "data.max_length": (0, False, INF, False),
    "data.max_prompt_length": (0, False, INF, False),
    "data.dataset_num_proc": (1, True, INF, False),
    "data.shuffle_seed": (0, True, SEEDS, False),
    "training.learning_rate": (0, False, INF, False),
    "training.num_train_epochs": (0, False, INF, False),
    "training.per_device_train_batch_size": (0, False, INF, False),
    "training.per_device_eval_batch_size": (0, False, INF, False),
    "training.gradient_accumulation_steps": (0, False, INF, False),
    "training.warmup_steps": (0, True, INF, False),
    "training.weight_decay": (0, True, INF, False),
    "training.max_grad_norm": (0, True, INF, False),
    "training.seed": (0, True, SEEDS, False),
    "training.dataloader_num_workers": (0, True, INF, False),
    "training.logging_steps": (0, False, INF, False),
    "training.save_steps": (0, False, INF, False),
    "training.save_total_limit": (0, False, INF, False),
    "training.eval_steps": (0, False, INF, False),
    "training.beta": (0, True, INF, False),
    "training.label_smoothing": (0, True, 0.5, False),
    "training.num_generations": (2, True, INF, False),
    "training.num_generations_eval": (1, True, INF, False),
    "training.max_completion_length": (0, False, INF, False),
    "training.temperature": (0, False, INF, False),
    "training.top_p": (0, False, 1, True),
    "training.log_rollouts_every": (0, True, INF, False),
    "training.epsilon": (0, True, INF, False),
    "training.epsilon_high": (0, True, INF, False),
    "training.num_iterations": (1, True, INF, False),
    "training.steps_per_generation": (1, True, INF, False),
    "training.kl_coef": (0, True, INF, False),
    "training.gamma": (0, True, 1, True),
    "training.lam": (0, True, 1, True),
    "training.cliprange": (0, False, INF, False),
    "training.cliprange_value": (0, False, INF, False),
    "training.vf_coef": (0, True, INF, False),
    "training.num_ppo_epochs": (1, True, INF, False),
    "training.num_mini_batches": (1, True, INF, False),
    "tinker.lora_rank": (0, False, INF, False),
    "tinker.adam_beta1": (0, True, 1, False),
    "tinker.adam_beta2": (0, True, 1, False),
    "tinker.adam_eps": (0, False, INF, False),
    "tinker.save_every": (0, False, INF, False),
    "tinker.checkpoint_ttl_s": (3600, True, 10 * 365 * 86400, True),  # what the service accepts: 1 h to 10 years
    "tinker.request_timeout_s": (0, False, INF, False),
    "tinker.max_retries": (0, True, INF, False),
    "workflow.num_solutions": (1, True, INF, False),
    "s3.max_retries": (0, True, INF, False),
}


def interval(low: float, low_in: bool, high: float, high_in: bool) -> str:
    """The range as a reader writes it: '> 0', '0 or more', '[0, 1)'."""
    if high == INF:
        return f"{'at least' if low_in else 'greater than'} {low:g}" if low else ("0 or more" if low_in else
                                                                                    "greater than 0")
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_value_ranges(recipe: Any) -> list[tuple[str, str]]:
    """(dotted key, message) for every numeric value out of its range or not finite, on any recipe."""
    return list(_walk(recipe, "", ""))


def _walk(node: Any, dotted: str, table: str) -> Iterator[tuple[str, str]]:
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            sep = "." if dotted else ""
            yield from _walk(getattr(node, f.name), f"{dotted}{sep}{f.name}", f"{table}{sep}{f.name}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if dataclasses.is_dataclass(item):
                yield from _walk(item, f"{dotted}[{i}]", f"{table}[]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if isinstance(node, float) and not math.isfinite(node):
            yield dotted, f"{node} is not a finite number; give a number" + (
                f" {interval(*RANGES[table])}." if table in RANGES else ".")
            return
        if table in RANGES:
            low, low_in, high, high_in = RANGES[table]
            if node < low or (node == low and not low_in) or node > high or (node == high and not high_in):
                yield dotted, f"{node:g} is out of range; it must be {interval(low, low_in, high, high_in)}."
