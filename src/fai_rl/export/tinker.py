"""Download a Tinker adapter that a run left on the service (`tinker.download_final: false`, or a tinker:// path).

As `tinker checkpoint download` does it: a training client is loaded from the saved state, its weights are exported
with `save_weights_external` (a temporary export, deleted afterwards) and every file is fetched from the signed URLs
of `get_external_weights_urls` (backends/tinker/adapter_download.fetch_exported_adapter, shared with final/ at the end of a
run). An `external_weights` path is fetched directly. Sampler weights cannot be exported by the service; the run's
saved state (`weights/...`, listed in checkpoints.json) can, and holds the same weights.

The training client is shaped like the run that saved the state (LoRA rank, which layers): from the run's resolved
recipe for a run dir, from the service (`get_weights_info_by_tinker_path`) for a bare `tinker://<run>/weights/<name>`
path; the state is then loaded into it (`load_state`). The API key comes from TINKER_API_KEY; the service from the run's
tinker.base_url, else TINKER_BASE_URL, else the SDK's default.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fai_rl.errors import BackendError, UsageError
from fai_rl.models.load import resolve_model_path
from fai_rl.models.source import ModelSource

EXPORT_TTL_S = 3600  # the temporary export outlives the download even if deleting it fails


@dataclass
class TinkerCheckpoint:
    """A downloadable Tinker checkpoint and what is needed to open it."""

    path: str  # tinker://<run>/weights/<name> or tinker://<run>/external_weights/<name>
    base_model: str  # the name the service knows the base by (also the local tokenizer / weights to merge into)
    tinker: dict  # the run's resolved `tinker:` section ({} for a bare path)
    step: int | None = None


def locate(source: ModelSource) -> TinkerCheckpoint:
    """The checkpoint to download for a `tinker` source: a run's last saved state, or the path the user named."""
    if source.run_dir is not None:
        import yaml

        record = json.loads((source.run_dir / "checkpoints.json").read_text(encoding="utf-8"))
        states = [c for c in record.get("checkpoints", []) if c.get("kind") == "state"]
        if not states:
            raise UsageError(f"the Tinker run in '{source.spec}' saved no state (checkpoints.json lists only sampler "
                             "weights, which the service cannot export); resume it with fai-rl-train --resume "
                             "tinker.download_final=true, or name a tinker://<run>/weights/<name> path.")
        recipe_file = source.run_dir / "recipe.resolved.yaml"
        recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.exists() else {}
        return TinkerCheckpoint(states[-1]["path"], record["base_model"], recipe.get("tinker") or {},
                                int(states[-1]["step"]))
    kind = source.path.removeprefix("tinker://").split("/")
    if len(kind) != 3 or kind[1] not in ("weights", "external_weights"):
        hint = (" Sampler weights cannot be exported by the service; name the run's saved state instead "
                "(tinker://<run>/weights/<name>, listed in the run's checkpoints.json), or the run dir.")
        hint = hint if "sampler" in source.path else ""
        raise UsageError(f"{source.spec}: not a downloadable Tinker checkpoint.{hint}"
                         " Use tinker://<run>/weights/<name> or tinker://<run>/external_weights/<name>.")
    return TinkerCheckpoint(source.path, source.base or "", {})


def download(checkpoint: TinkerCheckpoint, dest: Path) -> dict:
    """Fetch the checkpoint as a PEFT adapter into the empty dir `dest` (with fai_rl.json); returns its note."""
    import tinker

    from fai_rl.backends.tinker.adapter_download import fetch_exported_adapter
    from fai_rl.backends.tinker.common import check_api_key

    check_api_key()
    timeout = float(checkpoint.tinker.get("request_timeout_s") or 600)
    base_url = checkpoint.tinker.get("base_url")  # None: TINKER_BASE_URL, else the SDK's default
    service = tinker.ServiceClient(base_url=base_url)
    ok = False
    try:
        rest = tinker.RestClient(base_url=base_url)
        export_path = checkpoint.path
        temporary = "/external_weights/" not in checkpoint.path
        if temporary:
            client = _training_client(service, rest, checkpoint, timeout)
            name = f"fai-rl-export-{time.strftime('%Y%m%d-%H%M%S')}"
            export_path = _wait(client.save_weights_external(name, ttl_seconds=EXPORT_TTL_S), timeout,
                                f"exporting {checkpoint.path}").path
        try:
            listing = _wait(rest.get_external_weights_urls(export_path), timeout, f"listing the files of {export_path}")
            try:
                fetch_exported_adapter(listing.urls, dest, export_path, resolve_model_path(checkpoint.base_model),
                                       timeout)
            except OSError as e:
                raise _failure(f"downloading the files of {export_path}", e, timeout) from None
        finally:
            if temporary:
                try:
                    _wait(rest.delete_checkpoint_from_tinker_path(export_path), min(timeout, 60), "")
                except Exception:  # noqa: BLE001 - it expires after EXPORT_TTL_S anyway
                    pass
        ok = True
    finally:
        try:
            _wait(service.close("success" if ok else "errored"), 30, "")
        except Exception:  # noqa: BLE001 - the download's outcome matters more than the goodbye
            pass
    if not (dest / "adapter_config.json").exists():
        raise BackendError(f"Tinker: the export of {checkpoint.path} holds no adapter_config.json "
                           f"({', '.join(sorted(p.name for p in dest.iterdir())) or 'no files'}); cannot merge it.")
    note = {"base_model_name": checkpoint.base_model, "base_model_path": resolve_model_path(checkpoint.base_model),
            "kind": "peft_adapter", "backend": "tinker", "global_step": checkpoint.step,
            "tinker_state_path": checkpoint.path, "tinker_export_path": export_path}
    (dest / "fai_rl.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return note


def _training_client(service, rest, checkpoint: TinkerCheckpoint, timeout: float):
    """A LoRA training client shaped like the checkpoint's run, with the checkpoint's weights loaded."""
    k = checkpoint.tinker
    if not k:  # a bare path: the service says how the checkpoint was trained
        info = _wait(rest.get_weights_info_by_tinker_path(checkpoint.path), timeout, f"looking up {checkpoint.path}")
        if not info.is_lora:
            raise BackendError(f"Tinker: {checkpoint.path} holds full weights, not a LoRA adapter; fai-rl-export "
                               "merges LoRA adapters only.")
        k = {"lora_rank": info.lora_rank, "train_mlp": info.train_mlp, "train_attn": info.train_attn,
             "train_unembed": info.train_unembed}
    flag = {name: True if k.get(name) is None else bool(k[name]) for name in ("train_mlp", "train_attn",
                                                                            "train_unembed")}
    client = _wait(service.create_lora_training_client(base_model=checkpoint.base_model,
                                                       rank=int(k.get("lora_rank") or 32), **flag),
                   timeout, f"creating a LoRA training client for {checkpoint.base_model!r}")
    _wait(client.load_state(checkpoint.path), timeout, f"loading state {checkpoint.path}")
    return client


def _wait(future: Any, timeout: float, what: str) -> Any:
    try:
        return future.result(timeout=timeout) if hasattr(future, "result") else future
    except Exception as e:  # noqa: BLE001 - every SDK failure is reported the same way
        if not what:
            raise
        raise _failure(what, e, timeout) from None


def _failure(what: str, error: BaseException, timeout: float) -> BackendError:
    reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, TimeoutError):
        reason = f"no answer within {timeout:g} s"
    return BackendError(f"Tinker: {what} failed ({reason[:300]}); nothing was written.")
