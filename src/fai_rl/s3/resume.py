"""--resume with the store: a checkpoint-N named by its s3:// prefix, or the store's newest complete one."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from fai_rl.errors import BackendError, RecipeError
from fai_rl.s3.store import (
    SENTINEL,
    UPLOAD_LAST,
    S3Uri,
    _join,
    _listing,
    _reason,
    client,
    download_dir,
    parse_uri,
)

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def fetch_resume_checkpoint(recipe, resume: str | None) -> str | None:
    """--resume with the store: what find_resume_point should then read (a local path, or `resume` unchanged).

    `--resume s3://bucket/prefix/checkpoint-N` is downloaded into output_dir/checkpoint-N (a complete local one of
    that name is used instead). `--resume` (latest) with s3.enabled takes the store's newest complete checkpoint-N
    when it is newer than every complete local one, e.g. after s3.delete_local_after_upload; when the store cannot
    be reached, the local ones still serve. Complete: its upload's completion marker (fai_rl.s3.upload, written
    last) is there and every file it lists has its size on the store, so an upload cut short by a kill (no marker,
    or files missing) is passed over for the one before; a store without any marker (uploaded by another tool or an
    older fai-rl) falls back to trainer_state.json, which checkpoint uploads put last.
    """
    s3, out = recipe.s3, Path(recipe.training.output_dir)
    local = [int(m.group(1)) for p in out.glob("checkpoint-*")
             if (m := _CHECKPOINT.fullmatch(p.name)) and (p / UPLOAD_LAST).is_file()]
    if resume is not None and resume.startswith("s3://"):
        name = PurePosixPath(parse_uri(resume.rstrip("/"), "--resume").key).name
        if not (m := _CHECKPOINT.fullmatch(name)):
            raise RecipeError(f"--resume: '{resume}' is not a checkpoint-N prefix; give s3://bucket/prefix/"
                              "checkpoint-N.")
        if int(m.group(1)) in local:
            print(f"--resume: {out / name} is already here; resuming from it (delete it to fetch {resume})", flush=True)
            return str(out / name)
        return str(download_dir(resume, s3.region, s3.endpoint_url, dest=out / name, key="--resume"))
    if resume != "latest" or not s3.enabled:
        return resume
    try:
        stored = _listing(client(s3.region, s3.endpoint_url), s3.bucket, s3.prefix)
    except Exception as e:  # noqa: BLE001
        where = f"cannot list {S3Uri(s3.bucket, _join(s3.prefix))}/ for checkpoints ({_reason(e)})"
        if local:
            print(f"--resume: {where}; resuming from the local checkpoint-{max(local)}", flush=True)
            return resume
        raise BackendError(f"--resume: {where}; check s3.endpoint_url / s3.region and the AWS credentials.") from None
    remote = _complete_remote(client(s3.region, s3.endpoint_url), s3, stored)
    if not remote or remote <= max(local, default=-1):
        return resume
    name = f"checkpoint-{remote}"
    uri = str(S3Uri(s3.bucket, _join(s3.prefix, name)))
    print(f"--resume: {name} on the store is newer than any complete local checkpoint; fetching {uri}/", flush=True)
    return str(download_dir(uri, s3.region, s3.endpoint_url, dest=out / name, key="--resume"))


def _complete_remote(s3client, s3, stored: dict[str, int]) -> int | None:
    """The step of the newest complete checkpoint-N on the store (see fetch_resume_checkpoint), or None."""
    files: dict[int, dict[str, int]] = {}
    for rel, size in stored.items():
        head, _, tail = rel.partition("/")
        if (m := _CHECKPOINT.fullmatch(head)) and tail:
            files.setdefault(int(m.group(1)), {})[tail] = size
    marked = sorted((n for n, listed in files.items() if SENTINEL in listed), reverse=True)
    if not marked:
        return max((n for n, listed in files.items() if UPLOAD_LAST in listed), default=None)
    for n in sorted(files, reverse=True):
        uri = S3Uri(s3.bucket, _join(s3.prefix, f"checkpoint-{n}"))
        if n in marked:
            try:
                body = s3client.get_object(Bucket=s3.bucket, Key=_join(uri.key, SENTINEL))["Body"].read()
                manifest = json.loads(body)
            except Exception:  # noqa: BLE001 - an unreadable marker: not proof of a complete upload
                manifest = None
            if isinstance(manifest, dict) and all(files[n].get(rel) == size for rel, size in manifest.items()):
                return n
        print(f"--resume: {uri}/ on the store is incomplete (an upload cut short); passing over it", flush=True)
    return None
