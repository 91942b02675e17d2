"""`fai-rl-export`: a trained model -> a plain Hugging Face model dir (LoRA merged) with a model card.

    fai-rl-export runs/sft --out exports/sft                       # merge the adapter, save safetensors + tokenizer
    fai-rl-export runs/sft --out exports/sft --push-to-hub me/sft  # ... and upload it (token from HF_TOKEN)
    fai-rl-export runs/sft --out deploy/sft --target modal --gpu L4 --max-containers 2   # + modal_app.py, client.py
    fai-rl-export tinker://<run>/weights/<name> --base-model Qwen/Qwen3-4B-Instruct-2507 --out exports/t

RUN_OR_MODEL takes what fai-rl-eval and fai-rl-generate take (fai_rl.models.source): a run dir, its final/ or a
checkpoint-N dir, a model or adapter dir, a hub id, or a Tinker path. A Tinker run whose adapter stayed on the service
(tinker.download_final: false) is downloaded first. Everything is written into a staging dir next to --out and
renamed into place at the end, so --out is never half-written; a bad argument is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fai_rl.cli import report_errors
from fai_rl.errors import UsageError



def build_parser() -> argparse.ArgumentParser:
    from fai_rl.export.merge import DTYPES
    from fai_rl.export.modal import GPU_TYPES

    p = argparse.ArgumentParser(
        prog="fai-rl-export",
        description="Merge a trained model (LoRA adapter or full) into a plain Hugging Face model dir with a model "
        "card; optionally push it to the hub or write a Modal app that serves it.",
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run dir (output_dir), its final/ or a checkpoint-N dir, "
                   "a model or adapter dir, a hub id, or tinker://<run>/weights/<name>")
    p.add_argument("--out", required=True, help="the dir to write (refused if it exists and is not empty, unless "
                   "--overwrite); with --target modal it holds model/ plus the app files")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype to merge and save in (auto: the dtype the "
                   "weights declare; an adapter is merged in its base's dtype)")
    p.add_argument("--base-model", default=None, help="the base model: required for a tinker:// path (its name on "
                   "the service); for an adapter whose base moved, the dir or hub id to merge into")
    p.add_argument("--device", default="cpu", help="where to merge: cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds something")
    hub = p.add_argument_group("Hugging Face hub")
    hub.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the model dir to OWNER/NAME "
                     "(token from HF_TOKEN, never written anywhere)")
    hub.add_argument("--private", action="store_true", help="create the repo private")
    modal = p.add_argument_group("Modal deploy (--target modal)")
    modal.add_argument("--target", choices=("hf", "modal"), default="hf", help="hf: --out is the model dir; modal: "
                       "--out/model plus modal_app.py, client.py, DEPLOY.md")
    modal.add_argument("--gpu", default="L4", help=f"Modal GPU type: {', '.join(GPU_TYPES)} (TYPE:N for N), or none "
                       "(default L4)")
    modal.add_argument("--min-containers", type=int, default=0, help="containers kept warm (default 0: scale to zero)")
    modal.add_argument("--max-containers", type=int, default=1, help="most containers at once (default 1)")
    modal.add_argument("--scaledown-window", type=int, default=300, help="seconds an idle container stays up "
                       "(2-3600, default 300)")
    modal.add_argument("--timeout", type=int, default=600, help="seconds one request may take (default 600)")
    modal.add_argument("--app-name", default=None, help="the Modal app's name (default: from --out)")
    modal.add_argument("--volume", default=None, help="serve the weights from this Modal Volume instead of shipping "
                       "them with the image (large models; DEPLOY.md says how to fill it)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-export; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return report_errors("fai-rl-export", lambda: _run(args), "--out was not touched")


def _run(args: argparse.Namespace) -> int:
    from fai_rl.export import hub
    from fai_rl.export.modal import ModalSettings, check_gpu, check_settings
    from fai_rl.models.source import resolve_model_source

    out = Path(args.out).expanduser()
    settings = None
    if args.target == "modal":  # every flag is checked before any model is loaded
        settings = ModalSettings(args.app_name or _app_name(out), check_gpu(args.gpu), args.min_containers,
                                 args.max_containers, args.scaledown_window, args.timeout, args.volume)
        check_settings(settings)
    token = None
    if args.push_to_hub:
        hub.check_repo_id(args.push_to_hub)
        token = hub.hub_token()
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise UsageError(f"--device: '{args.device}' is not cpu, cuda or cuda:N.")
    source = resolve_model_source(args.model, "RUN_OR_MODEL", base_model=args.base_model)
    _check_out(out, args.overwrite, source)
    if source.kind == "tinker":
        from fai_rl.backends.tinker.common import check_api_key
        from fai_rl.export.tinker import locate

        locate(source)  # a run without a saved state, or a path that cannot be downloaded, is refused here
        check_api_key()

    began = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model_dir = staging / "model" if settings else staging
        model_dir.mkdir(exist_ok=True)
        note = _export_model(source, model_dir, staging, args)
        if settings:
            from fai_rl.export.modal import write_modal_app

            write_modal_app(staging, model_dir, settings)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final_model = out / "model" if settings else out
    files = ", ".join(sorted(p.name for p in final_model.iterdir()))
    what = "merged LoRA into its base" if note["merged_lora"] else "re-saved"
    print(f"fai-rl-export: {source.describe()}: {what}, {note['dtype']}, {note['parameters']:,} parameters, "
          f"{time.time() - began:.1f} s\n  {final_model}: {files}")
    if settings:
        print(f"  {out}: modal_app.py, client.py, DEPLOY.md (GPU {settings.gpu or 'none'}, "
              f"{settings.min_containers}-{settings.max_containers} containers)\n"
              f"  deploy: cd {out} && modal deploy modal_app.py   (steps in {out / 'DEPLOY.md'})")
    else:
        print(f"  load: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    if args.push_to_hub:
        url = hub.push(final_model, args.push_to_hub, args.private, token)
        print(f"  pushed to {url}")
    return 0


def _export_model(source, model_dir: Path, staging: Path, args: argparse.Namespace) -> dict:
    """Download (Tinker), merge, save, write the card; returns the provenance note."""
    from fai_rl.export.card import model_card
    from fai_rl.export.merge import merge_and_save, read_run
    from fai_rl.models.source import resolve_model_source

    run = read_run(source.run_dir)
    if source.kind == "tinker":
        from fai_rl.export import tinker

        checkpoint = tinker.locate(source)
        adapter_dir = staging / ".adapter"
        adapter_dir.mkdir()
        print(f"fai-rl-export: downloading {checkpoint.path} from Tinker ...", flush=True)
        tinker.download(checkpoint, adapter_dir)
        downloaded = resolve_model_source(str(adapter_dir), "RUN_OR_MODEL")
        downloaded.spec, downloaded.run_dir = source.spec, source.run_dir
        source = downloaded
    if args.base_model and source.kind == "peft_adapter":
        from fai_rl.models.load import resolve_model_path

        source.base = resolve_model_path(args.base_model)  # the adapter's base moved (a built-in: its cache dir)
    note = merge_and_save(source, model_dir, args.dtype, args.device, run)
    shutil.rmtree(staging / ".adapter", ignore_errors=True)
    out = Path(args.out)
    title = args.push_to_hub.split("/")[-1] if args.push_to_hub else out.resolve().name
    load_path = args.push_to_hub or str(out / "model" if args.target == "modal" else out)
    (model_dir / "README.md").write_text(model_card(note, run, title, load_path), encoding="utf-8")
    return note


def _check_out(out: Path, overwrite: bool, source) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' is a file; name a directory.")
    resolved = out.resolve()
    # --out may sit inside the run dir (runs/sft/merged), never on or around the weights it reads.
    inputs = [Path(p).resolve() for p in (source.path, source.run_dir, source.base) if p and Path(p).exists()]
    for inp in inputs:
        inside_weights = inp != (source.run_dir and Path(source.run_dir).resolve()) and inp in resolved.parents
        if resolved == inp or resolved in inp.parents or inside_weights:
            raise UsageError(f"--out: '{out}' overlaps the model being exported ('{inp}'); choose a dir outside it.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out: '{out}' already exists and is not empty; choose another dir or pass --overwrite "
                         "to replace it.")


def _replace(staging: Path, out: Path) -> None:
    """Rename the finished staging dir to `out`; an old `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _app_name(out: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in out.resolve().name).strip("-_") or "model"
    return f"fai-rl-{name}"[:64]


if __name__ == "__main__":
    sys.exit(main())
