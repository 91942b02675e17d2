"""model.init_from on the local backend (fai_rl.config.init_from): which dir a run starts from, and the refusals.

The end-to-end start (SFT adapter -> GRPO, first-step KL 0 against the start) runs inside
tests/test_sft_e2e.py::test_lora_trains_an_adapter_that_reloads_on_its_base, on the SFT run that test already makes.
"""

from __future__ import annotations

import json

from conftest import ROOT

from fai_rl.cli.train import main
from fai_rl.config.init_from import init_from_dir, init_from_problem


def _weights(path, adapter=False):
    path.mkdir(parents=True)
    (path / ("adapter_config.json" if adapter else "config.json")).write_text("{}")
    return path


def test_a_run_dir_gives_its_final_else_its_latest_checkpoint_and_a_model_dir_itself(tmp_path):
    run = tmp_path / "run"
    for n in (2, 10, 4):
        _weights(run / f"checkpoint-{n}")
    (run / "checkpoint-11").mkdir()  # no weights in it (a half-written save): skipped
    assert init_from_dir(str(run)) == run / "checkpoint-10"
    _weights(run / "final", adapter=True)
    assert init_from_dir(str(run)) == run / "final"
    assert init_from_dir(str(run / "checkpoint-4")) == run / "checkpoint-4"
    # the adapter's run was trained on another base: refused, naming the base to set
    (run / "final" / "fai_rl.json").write_text(json.dumps({"base_model_name": "fai-rl/tiny"}))
    assert init_from_problem(str(run), "fai-rl/tiny") is None
    problem = init_from_problem(str(run), "fai-rl/tiny-sft")
    assert "trained from 'fai-rl/tiny'" in problem and "set model.base_model_name=fai-rl/tiny" in problem


def test_bad_values_exit_2_naming_the_key_the_value_and_the_fix_and_write_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "empty"): "holds neither final/ nor a checkpoint-N",
        "tinker://run-1/weights/step-000002": "is a Tinker state, which the local backend cannot load",
    }
    for value, why in cases.items():
        out = tmp_path / "out"
        capsys.readouterr()
        code = main(["--recipe", str(ROOT / "recipes/quickstart/grpo.yaml"), f"training.output_dir={out}",
                     f"model.init_from={value}"])
        err = capsys.readouterr().err
        assert code == 2 and not out.exists(), err
        assert f"model.init_from: '{value}'" in err and why in err and "output_dir" in err, err
        assert "Traceback" not in err
