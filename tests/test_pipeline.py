"""Pipeline recipes (fai_rl.config.load_pipeline, fai_rl.cli.pipeline): the quickstart SFT -> GRPO -> export runs end
to end on CPU from one command, --resume continues at the stage that was cut, and a bad stage is refused before the
first one starts."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
import yaml
from conftest import ROOT

from fai_rl.cli.train import main
from fai_rl.config.load_pipeline import load_pipeline
from fai_rl.config.schema_pipeline import EXPORT_DTYPES, PRESETS

QUICKSTART = ROOT / "recipes" / "pipelines" / "quickstart.yaml"


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _distance(a, b) -> float:
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a) ** 0.5


def test_pipeline_quickstart_runs_end_to_end_and_resumes_at_the_cut_stage(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fai_rl.models.load import resolve_model_path

    root = tmp_path / "pipe"
    # --dry-run: every stage's own dry run (data, examples, rewards), their derived keys, nothing written
    assert main(["--recipe", str(QUICKSTART), f"output_root={root}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("recipe OK") == 2 and "dry run: every stage checked; nothing trained." in out
    assert f'model.init_from="{root / "sft"}"  model.base_model_name="fai-rl/tiny"' in out
    assert not root.exists()
    # --nohup: checked here, then the same command detached (its log in output_root/logs/); waited for
    assert main(["--recipe", str(QUICKSTART), f"output_root={root}", "--nohup"]) == 0
    started = capsys.readouterr().out
    pid = int(re.search(r"started in the background \(pid (\d+)\)", started).group(1))
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0  # detach's Popen: a child of this process
    (log,) = (root / "logs").glob("train-*.log")
    out = log.read_text()
    assert "===== stage 3/3: export (export) =====" in out and "pipeline finished" in out
    state = json.loads((root / "pipeline_state.json").read_text())
    assert [(s["name"], s["status"]) for s in state["stages"]] == [("sft", "finished"), ("grpo", "finished"),
                                                                     ("export", "finished")]
    for stage in ("sft", "grpo"):
        assert (root / stage / "final" / "model.safetensors").is_file(), stage
        assert len((root / stage / "metrics.jsonl").read_text().splitlines()) >= 4  # the tiny preset: 4 steps
    # GRPO started from the SFT stage's weights: its recipe says so, and its weights sit next to SFT's, far from the
    # base model's (4 SFT steps at 3e-3 move them; 4 GRPO steps at 1e-4 barely do: here not at all, as every reward
    # of a 4-step SFT model is 0, so every advantage is 0; measured grpo-sft 0.0, grpo-base 4.84)
    grpo_recipe = yaml.safe_load((root / "grpo" / "recipe.resolved.yaml").read_text())
    assert grpo_recipe["model"]["init_from"] == str(root / "sft")
    assert grpo_recipe["model"]["base_model_name"] == "fai-rl/tiny" and grpo_recipe["training"]["max_steps"] == 4
    sft, grpo = _weights(root / "sft" / "final"), _weights(root / "grpo" / "final")
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("fai-rl/tiny")).state_dict()
    base = {k: base[k] for k in sft}
    from_sft, from_base = _distance(grpo, sft), _distance(grpo, base)
    assert from_sft < 0.2 * from_base, (from_sft, from_base)
    # the exported model is GRPO's final model, and it loads and generates with plain transformers
    exported = root / "export"
    assert _distance(_weights(exported), grpo) == 0
    tok = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids.shape[1]
    print(f"\npipeline: grpo-sft {from_sft:.4f}, grpo-base {from_base:.4f}; stages "
          f"{[s['seconds'] for s in state['stages']]} s")

    # a kill -9 during GRPO after checkpoint-2: what it leaves behind, made by hand from the finished run
    sft_mtime = (root / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    grpo_dir = root / "grpo"
    for gone in ("final", "checkpoint-4", "summary.json"):
        shutil.rmtree(grpo_dir / gone) if (grpo_dir / gone).is_dir() else (grpo_dir / gone).unlink()
    rows = (grpo_dir / "metrics.jsonl").read_text().splitlines()
    (grpo_dir / "metrics.jsonl").write_text("\n".join(r for r in rows if json.loads(r).get("step", 0) <= 2) + "\n")
    run_state = json.loads((grpo_dir / "run_state.json").read_text())
    (grpo_dir / "run_state.json").write_text(json.dumps({**run_state, "state": "running"}))
    shutil.rmtree(exported)
    state["stages"][1]["status"], state["stages"][2]["status"] = "running", "pending"
    (root / "pipeline_state.json").write_text(json.dumps(state))

    assert main(["--recipe", str(QUICKSTART), f"output_root={root}", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "1. sft:" in out and "[finished: skipped]" in out and "[resume]" in out
    assert "===== stage 2/3: grpo (train), resumed from its last checkpoint =====" in out
    assert "stage 1/3" not in out  # SFT did not run again
    assert (root / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == sft_mtime
    steps = [json.loads(r)["step"] for r in (grpo_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1 and 3 in steps and 4 in steps  # continued from step 2, not restarted
    assert (grpo_dir / "final" / "model.safetensors").is_file() and (exported / "config.json").is_file()
    state = json.loads((root / "pipeline_state.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["finished"] * 3 and state["stages"][1]["resumed"] is True
    # everything finished: a further --resume has nothing to do
    assert main(["--recipe", str(QUICKSTART), f"output_root={root}", "--resume"]) == 0
    assert "every stage is finished" in capsys.readouterr().out


def _pipeline(tmp_path, grpo_overrides: dict) -> str:
    tree = yaml.safe_load(QUICKSTART.read_text())
    for s in tree["stages"]:
        if "recipe" in s:
            s["recipe"] = str((QUICKSTART.parent / s["recipe"]).resolve())
    tree["stages"][1]["overrides"] = {**tree["stages"][1]["overrides"], **grpo_overrides}
    tree["output_root"] = str(tmp_path / "pipe")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_dry_run_refuses_a_bad_stage_by_name_and_key_before_anything_runs(tmp_path, capsys):
    path = _pipeline(tmp_path, {"training": {"lerning_rate": 1e-4, "num_generations": 4}})
    assert main(["--recipe", path, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage 'grpo' (" in err and "training.lerning_rate: unknown key; did you mean training.learning_rate?" \
        in err, err
    assert "Traceback" not in err and not (tmp_path / "pipe").exists()
    # without --dry-run too: checked before the SFT stage starts, nothing written
    assert main(["--recipe", path, "sft.training.max_steps=-3"]) == 2
    err = capsys.readouterr().err
    assert "stage 'sft' (" in err and "training.max_steps" in err and "stage 'grpo' (" in err, err
    assert not (tmp_path / "pipe").exists()
    # the pipeline's own keys and its derived ones are named by their dotted key in the pipeline file
    path = _pipeline(tmp_path, {"model": {"init_from": "elsewhere"}})
    assert main(["--recipe", path, "presett=tiny"]) == 2
    err = capsys.readouterr().err
    assert "presett: unknown key; did you mean preset?" in err
    assert "stages[1].overrides.model.init_from: is set by the pipeline" in err, err
    # a stage on another backend than the one it starts from (a local run dir is no Tinker state)
    assert main(["--recipe", _pipeline(tmp_path, {}), "grpo.training.backend=tinker", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stage 'grpo' (" in err and "training.backend: 'tinker', but the stage before runs on 'local'" in err, err


def test_presets_set_the_documented_keys_and_explicit_overrides_win(tmp_path):
    from fai_rl.export.merge import DTYPES

    assert EXPORT_DTYPES == DTYPES
    doc = (ROOT / "docs" / "pipelines.md").read_text()
    for name, keys in PRESETS.items():
        for key, value in keys.items():  # the doc's table row for this key holds each preset's value
            row = next(line for line in doc.splitlines() if line.startswith(f"| `{key}`"))
            assert ("null" if value is None else str(value)) in row, (name, key, row)
    path = _pipeline(tmp_path, {"training": {"num_generations": 4, "max_steps": 7}})
    pipe, stages = load_pipeline(path, ["preset=quick", "sft.training.save_steps=5"])
    sft, grpo, export = stages
    assert pipe.preset == "quick" and export.kind == "export" and export.previous == grpo.output_dir
    # later overrides win: the preset's, then the stage's, then the command line's; derived keys last
    assert sft.overrides.index("training.max_steps=50") < len(sft.overrides) - 2
    assert sft.overrides[-2:] == ["training.save_steps=5", f'training.output_dir="{sft.output_dir}"']
    assert "training.max_steps=7" in grpo.overrides[grpo.overrides.index("training.max_steps=50"):]
    assert grpo.overrides[-2:] == [f'model.init_from="{sft.output_dir}"', 'model.base_model_name="fai-rl/tiny"']


@pytest.mark.parametrize("bad, message", [
    ({"stages": []}, "stages: no stages"),
    ({"stages": [{"name": "x", "kind": "export"}]}, "stages[0].kind: export comes after a training stage"),
    ({"stages": [{"name": "a b", "recipe": "nope.yaml"}]}, "stages[0].name: 'a b' is not a usable name"),
])
def test_a_malformed_pipeline_is_refused_with_its_dotted_key(tmp_path, capsys, bad, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"output_root": str(tmp_path / "o"), **bad}))
    assert main(["--recipe", str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.tinker
@pytest.mark.slow
def test_the_quickstart_pipeline_runs_on_the_tinker_backend(tmp_path, tinker_server, monkeypatch, capsys):
    """The same pipeline with `overrides: {training: {backend: tinker}, ...}` against the local Tinker-API server:
    GRPO loads the SFT run's last Tinker state (weights only), export downloads and merges GRPO's adapter."""
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    root = tmp_path / "pipe"
    assert main(["--recipe", str(QUICKSTART), f"output_root={root}", "overrides.training.backend=tinker",
                 f"overrides.tinker.base_url={tinker_server.base_url}", "overrides.tinker.lora_rank=8",
                 "overrides.model.base_model_name=fai-rl/tiny-sft", "overrides.training.eval_steps=null",
                 "overrides.data.eval_datasets=[]", "overrides.training.max_steps=2",
                 "overrides.training.save_steps=2", "sft.tinker.download_final=false"]) == 0
    out = capsys.readouterr().out
    sft_states = [c for c in json.loads((root / "sft" / "checkpoints.json").read_text())["checkpoints"]
                  if c["kind"] == "state"]
    assert f"tinker: initialised from {sft_states[-1]['path']} (weights only, fresh optimizer)" in out
    grpo_recipe = yaml.safe_load((root / "grpo" / "recipe.resolved.yaml").read_text())
    assert grpo_recipe["training"]["backend"] == "tinker" and grpo_recipe["model"]["init_from"] == str(root / "sft")
    state = json.loads((root / "pipeline_state.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["finished"] * 3
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(root / "export").num_parameters() > 0
    print(f"\ntinker pipeline: stages {[s['seconds'] for s in state['stages']]} s")
