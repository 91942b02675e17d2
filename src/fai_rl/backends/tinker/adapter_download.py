"""final/ of a Tinker run, and fai-rl-export of a tinker:// checkpoint: the adapter exported on the service in Hugging
Face (PEFT) format, downloaded file by file from signed URLs into a staging dir, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

from fai_rl.errors import BackendError
from fai_rl.models.load import resolve_model_path
from fai_rl.progress import say


def download_adapter(session, tokenizer, step: int) -> Path:
    """output_dir/final (`session`: a common.TinkerSession): the weights exported in Hugging Face (PEFT adapter) format and downloaded file by file.

    As `tinker checkpoint download` does: `save_weights_external` on the service, then one signed URL per file
    (`get_external_weights_urls`). Written into a staging dir and renamed into place, so final/ is never half-written.
    """
    say(f"exporting the final adapter on the Tinker service and downloading it into {session.run.path / 'final'}")
    export = session.retry(lambda: session.training.save_weights_external("final"), "exporting the final adapter")
    rest = session.service.create_rest_client()
    listing = session.wait(rest.get_external_weights_urls(export.path), f"listing the files of {export.path}")
    out = session.run.path
    staging = out / ".final.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        fetch_exported_adapter(listing.urls, staging, export.path,
                               resolve_model_path(session.recipe.model.base_model_name), session.k.request_timeout_s)
    except OSError as e:
        raise session.failure(f"downloading the files of {export.path}", e) from None
    tokenizer.save_pretrained(staging)
    note = {
        "base_model_name": session.recipe.model.base_model_name,
        "base_model_path": resolve_model_path(session.recipe.model.base_model_name),
        "kind": "peft_adapter",
        "backend": "tinker",
        "algorithm": session.recipe.training.algorithm,
        "global_step": step,
        "tinker_state_path": session.last_state,
        "tinker_export_path": export.path,
        "load_with": "peft.AutoPeftModelForCausalLM.from_pretrained(final_dir)",
    }
    (staging / "fai_rl.json").write_text(json.dumps(note, indent=2) + "\n")
    shutil.rmtree(out / "final", ignore_errors=True)
    os.replace(staging, out / "final")
    return out / "final"


def fetch_exported_adapter(urls: dict[str, str], dest: Path, export_path: str, base_path: str,
                           timeout_s: float) -> None:
    """Download the files of a `save_weights_external` export (name -> signed URL) into the empty dir `dest`.

    Shared by final/ at the end of a run and by fai-rl-export. The adapter_config.json is completed to load as what
    was trained (see _complete_adapter_config). An unsafe file name is a BackendError; a failed download an OSError
    that names the file (callers add what they were doing).
    """
    root = dest.resolve()
    for name, url in sorted(urls.items()):
        target = (dest / name).resolve()
        if not target.is_relative_to(root):
            raise BackendError(f"Tinker: the export {export_path} names an unsafe file path {name!r}; not written.")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, target.open("wb") as fh:
                shutil.copyfileobj(response, fh)
        except TimeoutError:
            raise  # kept as is: the caller reports it as "no answer within ..."
        except OSError as e:
            raise OSError(f"{name}: {e}") from e
    _complete_adapter_config(dest, base_path)


def _complete_adapter_config(adapter_dir: Path, base_path: str) -> None:
    """Make the exported adapter_config.json load as what was trained, with PEFT's Auto classes.

    target_modules: filled from the tensor names when the export leaves it null; PEFT reads null as its
    per-architecture default (q_proj, v_proj for Qwen3) and would silently load part of an adapter trained on every
    linear layer (seen with the local test server's export). task_type CAUSAL_LM when missing, and the base model
    as a path this machine can load (a built-in fai-rl model's local directory).
    """
    config_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not (config_path.exists() and weights.exists()):
        return
    config = json.loads(config_path.read_text())
    if not config.get("target_modules"):
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            names = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in f.keys() if ".lora_" in key}
        config["target_modules"] = sorted(names)
    config["task_type"] = config.get("task_type") or "CAUSAL_LM"
    config["base_model_name_or_path"] = base_path
    config_path.write_text(json.dumps(config, indent=2) + "\n")
