"""The recipe rule for S3 (load_recipe's extra_rules): s3:// names that parse, and what S3 needs installed here."""

from __future__ import annotations

from pathlib import PurePosixPath

from fai_rl.errors import BackendError, RecipeError
from fai_rl.s3.store import _NEEDS_BOTO3, FILE_SUFFIXES, parse_uri
from fai_rl.s3.upload import resolve_uploader


def check_s3(recipe) -> list[tuple[str, str]]:
    """Recipe rule (load_recipe's extra_rules): s3:// names parse, and what S3 needs is installed here."""
    named = [("model.base_model_name", recipe.model.base_model_name)]
    for section in ("datasets", "eval_datasets"):
        named += [(f"data.{section}[{i}].name", spec.name) for i, spec in enumerate(getattr(recipe.data, section))]
    problems, used = [], []
    for key, name in named:
        if not name.startswith("s3://"):
            continue
        used.append((key, f"'{name}'"))
        try:
            uri = parse_uri(name, key)
        except RecipeError as e:
            problems.append((key, e.problems[0].split(": ", 1)[1]))
            continue
        suffix = PurePosixPath(uri.key).suffix.lower()
        if key.startswith("data.") and suffix not in FILE_SUFFIXES:
            why = f"'{name}' is a {suffix or 'suffix-less'} object; an s3:// dataset must be one"
            problems.append((key, f"{why} {', '.join(FILE_SUFFIXES)} file."))
    if recipe.s3.enabled:
        used.append(("s3.enabled", "true"))
        if recipe.s3.delete_local_after_upload and recipe.training.load_best_model_at_end:
            problems.append(("s3.delete_local_after_upload", (
                "true together with training.load_best_model_at_end: the best checkpoint is reloaded from output_dir "
                "at the end, so it must stay there; set one of them false.")))
        try:
            resolve_uploader(recipe.s3.uploader)
        except BackendError as e:
            problems.append(("s3.uploader", str(e).split(": ", 1)[1]))
    if used:
        try:
            import boto3  # noqa: F401
        except ImportError:
            problems.append((used[0][0], f"{used[0][1]} {_NEEDS_BOTO3}."))
    return problems
