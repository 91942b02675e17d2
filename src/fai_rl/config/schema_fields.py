"""The recipe schema's building blocks: the closed sets of values its fields choose from, and `_f`, the field helper.

Every section module (schema_data, schema_training, ...) declares its fields with `_f`, so each carries its one-line
`help` and, where the value is one of a closed set, its `choices`; fai_rl.config.schema puts the sections together.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from omegaconf import MISSING

from fai_rl.algorithms import algorithm_names

ALGORITHMS = algorithm_names()  # the registry's (fai_rl.algorithms), with their defaults for null training keys
BACKENDS = ("local", "tinker")
# transformers.SchedulerType values (tests/test_recipe_schema.py checks they match the installed transformers).
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
)  # not offered: cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay (need arguments no key carries)
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# A subset of transformers.OptimizerNames worth offering (checked against transformers by the same test).
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "lion_8bit",
    "paged_lion_8bit",
)


def _f(default: Any = MISSING, help: str = "", choices: tuple | None = None, **kw: Any) -> Any:
    """A dataclass field with its documentation (and closed set of values) attached."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)
