"""The store itself: s3:// URIs, a boto3 client, and downloads of an object or a whole prefix into the local cache."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fai_rl.errors import BackendError, RecipeError
from fai_rl.paths import cache_home

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # what data.datasets[].name may name on a store
SENTINEL = ".fai_rl_s3_complete"  # written into a downloaded dir before it is renamed into place
UPLOAD_LAST = "trainer_state.json"  # on the store, its presence marks a complete checkpoint
_NEEDS_BOTO3 = "needs boto3; pip install 'fai-rl[s3]'"


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # without a leading or trailing '/'

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def parse_uri(uri: str, key: str) -> S3Uri:
    """s3://bucket/key as an S3Uri; a RecipeError naming the recipe `key` when `uri` is not one."""
    bucket, _, path = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", bucket) or not path.strip("/"):
        raise RecipeError(f"{key}: '{uri}' is not an s3://bucket/key URI; write it as s3://my-bucket/path/to/object.")
    return S3Uri(bucket, path.strip("/"))


def client(region: str | None = None, endpoint_url: str | None = None, retry: bool = True):
    """A boto3 S3 client; retry=False leaves retrying to the caller (uploads count their own attempts)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BackendError(f"S3 (s3:// paths, the s3: section) {_NEEDS_BOTO3}.") from None
    retries = {"mode": "standard"} if retry else {"mode": "standard", "total_max_attempts": 1}
    config = Config(connect_timeout=10, read_timeout=120, retries=retries)
    # a Session per client: boto3's default session is not safe to share between the upload thread and training
    return boto3.session.Session().client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


def cache_root() -> Path:
    """$FAI_RL_HOME/s3: downloaded objects and dirs, one subdir per bucket."""
    return cache_home() / "s3"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reason(e: BaseException) -> str:
    """One line on why an S3 call failed (botocore's messages name the URL and error code, never credentials)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "-1"))  # -1 / absent: a single process


# ---------------------------------------------------------------- downloads


def download_file(uri: str, region: str | None = None, endpoint_url: str | None = None, key: str = "s3 URI") -> Path:
    """The object at `uri` as a local file under cache_root(), fetched again only when its ETag changes.

    The file keeps the object's name (so its suffix still says its format); concurrent processes each write a partial
    file and rename it into place.
    """
    u = parse_uri(uri, key)
    s3 = client(region, endpoint_url)
    try:
        etag = s3.head_object(Bucket=u.bucket, Key=u.key)["ETag"].strip('"')
    except Exception as e:  # noqa: BLE001 - botocore raises many types; the reason is what the user needs
        raise BackendError(f"{key}: cannot read {uri} ({_reason(e)}); check the bucket, the key, the region / "
                           "endpoint and the AWS credentials in the environment.") from None
    dest = cache_root() / u.bucket / f"{_digest(uri)}-{_digest(etag)}" / PurePosixPath(u.key).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        s3.download_file(u.bucket, u.key, str(partial))
    except Exception as e:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        raise BackendError(f"{key}: downloading {uri} failed ({_reason(e)}).") from None
    os.replace(partial, dest)
    return dest


def _listing(s3, bucket: str, prefix: str) -> dict[str, int]:
    """relative name -> size of every object under `prefix`/ (directory markers left out)."""
    found: dict[str, int] = {}
    prefix = _join(prefix)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) :].lstrip("/")
            if rel and not rel.endswith("/"):
                found[rel] = obj["Size"]
    return found


def download_dir(uri: str, region: str | None = None, endpoint_url: str | None = None, dest: Path | None = None,
                 key: str = "s3 URI", timeout_s: float = 3600.0) -> Path:
    """Every object under `uri`/ as a local dir: `dest`, or one under cache_root() keyed by the URI and the listing.

    Per node, local rank 0 (or the only process) downloads into a staging dir, writes SENTINEL into it and renames it
    into place; the other local ranks wait (up to timeout_s) for the sentinel. A dir that already holds it is reused.
    """
    u = parse_uri(uri.rstrip("/"), key)
    s3 = client(region, endpoint_url)
    try:
        objects = _listing(s3, u.bucket, u.key)
    except Exception as e:  # noqa: BLE001
        raise BackendError(f"{key}: cannot list {u}/ ({_reason(e)}); check the bucket, the region / endpoint and "
                           "the AWS credentials in the environment.") from None
    if objects.pop(SENTINEL, None) is not None:  # fai-rl's upload marker: the manifest of a complete upload
        _check_manifest(s3, u, objects, key)
    if not objects:
        raise RecipeError(f"{key}: there is nothing under {u}/; give the prefix of a model dir (config.json, weights, "
                          "tokenizer), e.g. the final/ of a run uploaded with s3.enabled.")
    if dest is None:
        dest = cache_root() / u.bucket / f"{_digest(str(u))}-{_digest(repr(sorted(objects.items())))}"
    if (dest / SENTINEL).exists():
        return dest
    if _local_rank() > 0:
        deadline = time.time() + timeout_s
        while not (dest / SENTINEL).exists():
            if time.time() > deadline:
                raise BackendError(f"{key}: waited {timeout_s:g} s for local rank 0 to download {u}/ into {dest}.")
            time.sleep(1.0)
        return dest
    print(f"s3: downloading {u}/ ({len(objects)} files, {sum(objects.values()) / 2**20:.1f} MiB) -> {dest}", flush=True)
    staging = dest.parent / f".{dest.name}.partial-{socket.gethostname()}-{os.getpid()}"
    unsafe = [rel for rel in objects if not (staging / rel).resolve().is_relative_to(staging.resolve())]
    if unsafe:
        raise BackendError(f"{key}: {u}/ holds an object with an unsafe name {unsafe[0]!r}; nothing was written.")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel in sorted(objects):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(u.bucket, _join(u.key, rel), str(staging / rel))
    except Exception as e:  # noqa: BLE001
        shutil.rmtree(staging, ignore_errors=True)
        raise BackendError(f"{key}: downloading {u}/ failed ({_reason(e)}).") from None
    (staging / SENTINEL).write_text(f"{u}/\n")
    if dest.exists() and not (dest / SENTINEL).exists():
        shutil.rmtree(dest)  # an earlier copy cut short (or a checkpoint killed while it was being written)
    try:
        os.replace(staging, dest)
    except OSError:
        if not (dest / SENTINEL).exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another node on a shared filesystem finished first
    return dest


def _check_manifest(s3, u: S3Uri, objects: dict[str, int], key: str) -> None:
    """BackendError when the store holds less than the upload's manifest lists (an upload cut short, or one being
    replaced); a prefix without a marker (uploaded by other tools) is taken as it is."""
    import json

    try:
        manifest = json.loads(s3.get_object(Bucket=u.bucket, Key=_join(u.key, SENTINEL))["Body"].read())
    except Exception:  # noqa: BLE001 - an unreadable marker: the listing is all there is to go on
        return
    short = sorted(rel for rel, size in manifest.items() if objects.get(rel) != size)
    if short:
        raise BackendError(f"{key}: {u}/ is incomplete: {len(short)} of its {len(manifest)} uploaded files are "
                           f"missing or of another size (e.g. {short[0]}); upload it again or use another copy.")
