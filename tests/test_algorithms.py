"""The algorithm registry (fai_rl.algorithms): what the schema, dispatch and rules ask of it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from fai_rl.algorithms import REGISTRY, algorithm_names, spec_of
from fai_rl.config.schema import ALGORITHMS, BACKENDS, TrainingConfig


def test_the_schema_offers_exactly_the_registry_and_every_spec_has_a_module_on_every_backend():
    assert ALGORITHMS == tuple(REGISTRY)
    for name, s in REGISTRY.items():
        assert s.name == name and s.summary and s.title
        assert set(s.modules) == set(BACKENDS)
        assert set(s.workflow_modules) <= set(BACKENDS)


def test_defaults_fill_keys_that_are_null_in_the_schema():
    nullable = {f.name for f in dataclasses.fields(TrainingConfig) if f.default is None}
    for s in REGISTRY.values():
        assert set(s.defaults) <= nullable, s.name


def test_groups_and_an_unknown_name():
    assert algorithm_names(samples_groups=True) == ("grpo", "gspo", "rloo")
    assert algorithm_names(samples=True) == ("ppo", "grpo", "gspo", "rloo")  # registry order (SAMPLING: GRPO first)
    assert algorithm_names(rollout_loop=False) == ("sft", "cpt", "dpo", "grpo", "gspo", "rloo")
    assert [n for n, s in REGISTRY.items() if s.sequences_per_row == 2] == ["dpo"]
    with pytest.raises(TypeError, match="no sampels"):
        algorithm_names(sampels=True)
    unknown = spec_of("sft_vlm")  # refused by the schema; the rules that still run ask it and get no capability
    assert not (unknown.samples or unknown.samples_groups or unknown.rollout_loop or unknown.defaults)
    with pytest.raises(TypeError):
        spec_of("grpo").defaults["beta"] = 1.0  # a spec is shared: frozen all the way down


def test_the_registry_imports_nothing_heavy():
    code = "import sys, fai_rl.algorithms; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('torch', 'transformers', 'omegaconf') or m.startswith('fai_rl.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fai_rl.algorithms']"
