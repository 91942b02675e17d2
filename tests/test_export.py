"""fai-rl-export end to end on the built-in tiny model: merge, card, Modal app, hub push, Tinker download, errors.

The LoRA run is made in-test in about a second (no training): fai-rl/tiny wrapped with peft, its LoRA B weights set
to seeded noise so the adapter moves the logits, saved in the final/ layout the local backend writes, beside the
resolved quickstart recipe and a summary.json. The Tinker test trains 2 steps on the local Tinker-API server.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest
import torch
from conftest import ROOT

from fai_rl.cli.export import main

IDS = torch.tensor([[256 + 1, 117, 115, 101, 114, 10, 87, 104, 97, 116]])  # a few byte tokens of the tiny vocab
SECRET = "hf_do_not_leak_0123456789"


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished LoRA SFT run dir: final/ (adapter + tokenizer + fai_rl.json), recipe.resolved.yaml, summary.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fai_rl.config import load_recipe, recipe_to_yaml
    from fai_rl.models.builtin import materialize_builtin_model

    run = tmp_path_factory.mktemp("runs") / "sft-lora"
    base = materialize_builtin_model("fai-rl/tiny")
    recipe = load_recipe(ROOT / "recipes/quickstart/sft.yaml", ["model.use_lora=true", "model.lora_r=4",
                                                                 f"training.output_dir={run}"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    final = run / "final"
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(base).save_pretrained(final)
    (final / "fai_rl.json").write_text(json.dumps({
        "base_model_name": "fai-rl/tiny", "kind": "peft_adapter", "algorithm": "sft", "global_step": 300,
        "base_model_path": str(base)}))
    (run / "recipe.resolved.yaml").write_text(recipe_to_yaml(recipe))
    (run / "summary.json").write_text(json.dumps({"metrics": {"loss": {"first": 5.5, "last": 1.02},
                                                              "eval_loss": {"first": 5.49, "last": 1.04}},
                                                  "global_step": 300, "algorithm": "sft"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 300, "loss": 1.02}) + "\n")
    adapter_logits = logits(model)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32))
    return run, adapter_logits, base_logits


def test_export_merges_the_adapter_into_a_plain_model_with_card_and_provenance(lora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, adapter_logits, base_logits = lora_run
    out = tmp_path / "exported"
    assert main([str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "merged LoRA into its base" in printed and "float32" in printed
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "fai_rl.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("adapter_*")) and not list(tmp_path.glob(".exported.*"))  # no adapter, no staging left
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no peft needed
    diff = (logits(merged) - adapter_logits).abs().max().item()
    assert diff < 1e-4, diff
    assert (logits(merged) - base_logits).abs().max().item() > 1e-2  # the adapter really changed the model
    assert AutoTokenizer.from_pretrained(out)("What is 2 + 3?")["input_ids"]
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "- fai-rl" in front and "- sft" in front
    assert "base_model:" not in front  # fai-rl/tiny is built in, not a hub id the hub could link
    assert "algorithm: sft" in card and "use_lora: true" in card and "learning_rate: 0.003" in card  # the recipe
    assert "| eval_loss | 5.49 | 1.04 |" in card
    note = json.loads((out / "fai_rl.json").read_text())
    assert note["merged_lora"] and note["source_kind"] == "peft_adapter" and note["algorithm"] == "sft"
    assert note["base_model_name"] == "fai-rl/tiny" and note["dtype"] == "float32" and note["global_step"] == 300
    print(f"\nexport: merged vs adapter logits max |diff| {diff:.2e}")


def test_a_qlora_adapter_is_merged_into_the_full_precision_base_and_the_card_says_so(lora_run, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    run, adapter_logits, _ = lora_run
    qlora = tmp_path / "qlora-run"
    shutil.copytree(run, qlora)
    recipe = (qlora / "recipe.resolved.yaml").read_text()
    (qlora / "recipe.resolved.yaml").write_text(recipe.replace("load_in_4bit: false", "load_in_4bit: true"))
    out = tmp_path / "merged"
    assert main([str(qlora), "--out", str(out)]) == 0
    note = json.loads((out / "fai_rl.json").read_text())
    assert note["adapter_trained_on_quantised_base"] == "4-bit" and note["dtype"] == "float32"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    card = (out / "README.md").read_text()
    assert "4-bit-quantised base (QLoRA) and merged here into the full-precision base" in card
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert (logits(merged) - adapter_logits).abs().max().item() < 1e-4


def test_modal_target_writes_an_app_whose_serving_function_answers(lora_run, tmp_path):
    run, _, _ = lora_run
    out = tmp_path / "deploy"
    assert main([str(run / "final"), "--out", str(out), "--target", "modal", "--gpu", "a100-80gb",
                 "--min-containers", "1", "--max-containers", "3", "--scaledown-window", "120"]) == 0
    assert {p.name for p in out.iterdir()} == {"model", "modal_app.py", "client.py", "DEPLOY.md"}
    app_text = (out / "modal_app.py").read_text()
    for line in ("GPU = 'A100-80GB'", "MIN_CONTAINERS = 1", "MAX_CONTAINERS = 3", "SCALEDOWN_WINDOW = 120",
                 "VOLUME = None", "@modal.fastapi_endpoint(method=\"POST\""):
        assert line in app_text
    assert "modal deploy modal_app.py" in (out / "DEPLOY.md").read_text()
    compile((out / "client.py").read_text(), "client.py", "exec")

    spec = importlib.util.spec_from_file_location("exported_modal_app", out / "modal_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports without modal installed
    assert module.MODEL_DIR_LOCAL == out / "model"
    generator = module.Generator(module.MODEL_DIR_LOCAL)
    answer = generator.generate({"prompt": "What is 2 + 3?", "max_new_tokens": 8})
    assert isinstance(answer["text"], str) and 1 <= answer["num_tokens"] <= 8
    again = generator.generate({"messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_new_tokens": 8})
    assert again == answer  # a prompt is one user turn; greedy decoding is deterministic
    sampled = generator.generate({"prompt": "hi", "max_new_tokens": 4, "temperature": 1.0, "raw": True})
    assert isinstance(sampled["text"], str)
    for bad, says in (({}, "exactly one of"), ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
                      ({"prompt": "x", "temperature": -1}, "temperature"), ({"messages": [{"role": "user"}]},
                                                                             "messages")):
        with pytest.raises(ValueError, match=says):
            generator.generate(bad)


def test_push_to_hub_uploads_the_exported_dir_and_never_writes_the_token(lora_run, tmp_path, monkeypatch, capsys):
    # The hub service itself is replaced (there is no hub here); everything up to its API calls is real.
    import huggingface_hub

    calls = []

    class FakeHfApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kwargs):
            files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
            calls.append(("upload_folder", folder_path, repo_id, files))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = tmp_path / "pushed"
    assert main([str(run_dir(lora_run)), "--out", str(out), "--push-to-hub", "me/tiny-sft", "--private"]) == 0
    assert calls[0] == ("token", SECRET)
    assert calls[1] == ("create_repo", "me/tiny-sft", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][1:3] == (str(out), "me/tiny-sft")
    assert {"model.safetensors", "README.md", "fai_rl.json", "tokenizer.json"} <= set(calls[2][3])
    assert "me/tiny-sft" in (out / "README.md").read_text()  # the loading example names the repo
    printed = capsys.readouterr()
    assert "pushed to https://huggingface.co/me/tiny-sft" in printed.out
    assert SECRET not in printed.out + printed.err
    assert not any(SECRET.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())

    class FailingHfApi(FakeHfApi):
        def upload_folder(self, folder_path, repo_id, **kwargs):
            raise RuntimeError(f"401 Unauthorized for token {SECRET}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingHfApi)
    assert main([str(run_dir(lora_run)), "--out", str(tmp_path / "p2"), "--push-to-hub", "me/tiny-sft"]) == 2
    err = capsys.readouterr().err
    assert "the upload failed" in err and "401" in err and SECRET not in err and "Traceback" not in err


def run_dir(lora_run):
    return lora_run[0]


def test_bad_input_is_one_clear_line_and_nothing_is_written(lora_run, tmp_path, monkeypatch, capsys):
    run = run_dir(lora_run)
    out = tmp_path / "out"

    def fails(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("fai-rl-export: ") and "Traceback" not in err
        return err

    assert "does not exist" in fails(str(tmp_path / "nope"), "--out", str(out))
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint-4").mkdir(parents=True)
    (unfinished / "recipe.resolved.yaml").write_text((run / "recipe.resolved.yaml").read_text())
    err = fails(str(unfinished), "--out", str(out))
    assert "has no final/ yet" in err and "checkpoint-4" in err
    assert "--gpu: 'V100' is not a Modal GPU" in fails(str(run), "--out", str(out), "--target", "modal",
                                                       "--gpu", "V100")
    assert "--scaledown-window" in fails(str(run), "--out", str(out), "--target", "modal", "--scaledown-window", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert "export HF_TOKEN=" in fails(str(run), "--out", str(out), "--push-to-hub", "me/x")
    assert "not a hub repo id" in fails(str(run), "--out", str(out), "--push-to-hub", "not a repo")
    err = fails("tinker://run-1/sampler_weights/final", "--base-model", "fai-rl/tiny-sft", "--out", str(out))
    assert "Sampler weights cannot be exported" in err and "/weights/" in err
    assert "--base-model" in fails("tinker://run-1/weights/step-000002", "--out", str(out))
    # An adapter whose base model is gone: named, with the way out.
    moved = tmp_path / "moved"
    (moved / "final").mkdir(parents=True)
    for f in (run / "final").iterdir():
        (moved / "final" / f.name).write_bytes(f.read_bytes())
    config = json.loads((moved / "final" / "adapter_config.json").read_text())
    (moved / "final" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path":
                                                                     str(tmp_path / "gone-base")}))
    (moved / "final" / "fai_rl.json").write_text(json.dumps({"kind": "peft_adapter"}))
    err = fails(str(moved / "final"), "--out", str(out))
    assert "gone-base" in err and "--base-model" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    # ...and --base-model points it at the base.
    from fai_rl.models.builtin import materialize_builtin_model

    base = str(materialize_builtin_model("fai-rl/tiny"))
    assert main([str(moved / "final"), "--out", str(out), "--base-model", base]) == 0
    # An existing --out is refused without --overwrite, replaced with it; --out may not hold the input.
    capsys.readouterr()
    assert "already exists and is not empty" in fails(str(run), "--out", str(out))
    assert main([str(run), "--out", str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "fai_rl.json").read_text())["dtype"] == "bfloat16"
    capsys.readouterr()
    assert "overlaps the model being exported" in fails(str(run), "--out", str(run.parent), "--overwrite")


def test_the_generated_app_builds_with_real_modal_when_it_is_installed(lora_run, tmp_path):
    pytest.importorskip("modal")  # not a dependency (pip install 'fai-rl[deploy]'); checked where it is installed
    out = tmp_path / "deploy"
    assert main([str(run_dir(lora_run)), "--out", str(out), "--target", "modal", "--gpu", "none"]) == 0
    spec = importlib.util.spec_from_file_location("modal_app_real", out / "modal_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.app is not None and module.app.name == "fai-rl-deploy"


@pytest.mark.tinker
def test_a_tinker_run_left_on_the_service_is_downloaded_and_merged(tmp_path, tinker_server, monkeypatch, capsys):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from fai_rl.cli.train import main as train

    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    run = tmp_path / "tinker-sft"
    assert train(["--recipe", str(ROOT / "recipes/quickstart/sft.yaml"), "training.backend=tinker",
                  f"tinker.base_url={tinker_server.base_url}", "model.base_model_name=fai-rl/tiny-sft",
                  "tinker.lora_rank=8", f"training.output_dir={run}", "training.max_steps=2",
                  "training.per_device_train_batch_size=4", "data.datasets[0].max_samples=32",
                  "training.learning_rate=1e-2", "training.warmup_steps=0", "training.eval_steps=null",
                  "tinker.download_final=false", "data.eval_datasets=[]"]) == 0
    assert not (run / "final").exists()
    # Keep a copy of what the export downloads (a spy on the real download, not a stand-in) to compare against.
    import shutil

    from fai_rl.export import tinker

    adapter = tmp_path / "adapter"
    real_download = tinker.download

    def download_and_keep(checkpoint, dest):
        note = real_download(checkpoint, dest)
        shutil.copytree(dest, adapter)
        return note

    monkeypatch.setattr(tinker, "download", download_and_keep)
    out = tmp_path / "exported"
    began = time.time()
    assert main([str(run), "--out", str(out)]) == 0
    took = time.time() - began
    assert "downloading tinker://" in capsys.readouterr().out
    note = json.loads((out / "fai_rl.json").read_text())
    assert note["merged_lora"] and note["backend"] == "tinker" and note["tinker_state_path"].startswith("tinker://")
    listed = json.loads((run / "checkpoints.json").read_text())["checkpoints"]
    states = [c["path"] for c in listed if c["kind"] == "state"]
    assert note["tinker_state_path"] == states[-1] and note["global_step"] == 2
    assert not (out / ".adapter").exists() and "| loss |" in (out / "README.md").read_text()
    adapted = logits(AutoPeftModelForCausalLM.from_pretrained(adapter))
    merged = logits(AutoModelForCausalLM.from_pretrained(out))
    base = logits(AutoModelForCausalLM.from_pretrained(note["base_model_path"]))
    diff = (merged - adapted).abs().max().item()
    assert diff < 1e-4 and (merged - base).abs().max().item() > 1e-3, diff
    # The same state named by its tinker:// path (the service says how it was trained).
    bare = tmp_path / "bare"
    monkeypatch.setenv("TINKER_BASE_URL", tinker_server.base_url)  # no run recipe to name the service
    monkeypatch.setattr(tinker, "download", real_download)
    assert main([states[-1], "--base-model", "fai-rl/tiny-sft", "--out", str(bare)]) == 0
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(bare)), merged)
    monkeypatch.delenv("TINKER_API_KEY")
    capsys.readouterr()
    assert main([str(run), "--out", str(tmp_path / "nokey")]) == 2
    err = capsys.readouterr()
    assert "TINKER_API_KEY is not set" in err.err and "downloading" not in err.out
    print(f"\ntinker export: download + merge {took:.1f} s, merged vs adapter logits max |diff| {diff:.2e}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
