"""--resume with the store: a checkpoint-N named by its s3:// prefix, or the store's newest complete one."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from fai_rl.errors import BackendError, RecipeError
from fai_rl.s3.store import UPLOAD_LAST, S3Uri, _join, _listing, _reason, client, download_dir, parse_uri

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def fetch_resume_checkpoint(recipe, resume: str | None) -> str | None:
    """--resume with the store: what find_resume_point should then read (a local path, or `resume` unchanged).

    `--resume s3://bucket/prefix/checkpoint-N` is downloaded into output_dir/checkpoint-N (a complete local one of
    that name is used instead). `--resume` (latest) with s3.enabled takes the store's newest complete checkpoint-N
    (one holding trainer_state.json) when it is newer than every complete local one, e.g. after
    s3.delete_local_after_upload; when the store cannot be reached, the local ones still serve.
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
    remote = [int(m.group(1)) for rel in stored
              if (m := _CHECKPOINT.fullmatch(rel.split("/")[0])) and rel.split("/")[1:] == [UPLOAD_LAST]]
    if not remote or max(remote) <= max(local, default=-1):
        return resume
    name = f"checkpoint-{max(remote)}"
    uri = str(S3Uri(s3.bucket, _join(s3.prefix, name)))
    print(f"--resume: {name} on the store is newer than any complete local checkpoint; fetching {uri}/", flush=True)
    return str(download_dir(uri, s3.region, s3.endpoint_url, dest=out / name, key="--resume"))
