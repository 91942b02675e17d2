"""S3 and S3-compatible stores: s3:// datasets and model dirs are downloaded, checkpoints and final/ uploaded.

The recipe keys and the layout are Roblox FAI-RL's (`s3:` section; s3://bucket/prefix/checkpoint-N/ and .../final/;
`model.s3_region`, `data.datasets[].s3_endpoint_url`, ...). What this adds to its uploader: every file is retried with
backoff and the upload is verified against the store before a local copy may be deleted; a failed upload never stops
training and never deletes anything (one line, and summary.json's `s3_failed_uploads`); trainer_state.json goes last,
so a checkpoint on the store that holds it is complete, which is what `--resume` looks for there.

Credentials come only from boto3's own chain (AWS_* environment variables, ~/.aws, an instance role); nothing here
reads, prints or writes them. boto3 is imported on first use (`pip install 'fai-rl[s3]'`); transformers only for
the Trainer callback, so recipe rules and data loading can import this module cheaply.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fai_rl.errors import BackendError, RecipeError
from fai_rl.paths import cache_home

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # what data.datasets[].name may name on a store
SENTINEL = ".fai_rl_s3_complete"  # written into a downloaded dir before it is renamed into place
UPLOAD_LAST = "trainer_state.json"  # on the store, its presence marks a complete checkpoint
BACKOFF_S = 1.0  # first wait between two attempts; doubles after each, at most 30 s
_SNAPSHOTS = ".s3-uploading"  # output_dir/.s3-uploading/checkpoint-N: hard links of a checkpoint being uploaded
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
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
    objects.pop(SENTINEL, None)
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


# ---------------------------------------------------------------- uploads


class UploadFailed(BackendError):
    """An upload that failed after its attempts (or whose verification found the store short)."""

    def __init__(self, attempts: int, reason: str):
        self.attempts, self.reason = attempts, reason
        super().__init__(f"failed after {attempts} attempt{'s' if attempts != 1 else ''} ({reason})")


def resolve_uploader(uploader: str) -> str:
    """'boto3' or 's5cmd' for s3.uploader (auto: s5cmd when on PATH); an error when s5cmd is asked for and absent."""
    if uploader == "s5cmd" and shutil.which("s5cmd") is None:
        raise BackendError("s3.uploader: 's5cmd' but the s5cmd binary is not on PATH; install it "
                           "(https://github.com/peak/s5cmd) or set s3.uploader to auto or boto3.")
    return "s5cmd" if uploader == "s5cmd" or (uploader == "auto" and shutil.which("s5cmd")) else "boto3"


def upload_dir(local_dir: Path, bucket: str, key_prefix: str, region: str | None = None,
               endpoint_url: str | None = None, uploader: str = "boto3", max_retries: int = 3) -> int:
    """Upload every file under local_dir to s3://bucket/key_prefix/..., then check the store holds each at its size.

    Each transfer is tried 1 + max_retries times, waiting BACKOFF_S, 2 x BACKOFF_S, ... in between; UPLOAD_LAST goes
    after everything else. Returns the number of files; raises UploadFailed.
    """
    files = sorted((p for p in local_dir.rglob("*") if p.is_file() and p.name != SENTINEL),
                   key=lambda p: (p.name == UPLOAD_LAST, str(p)))
    if not files:
        raise UploadFailed(1, f"{local_dir} holds no files")
    s3 = client(region, endpoint_url, retry=False)

    def attempt(what, *args):
        for n in range(max_retries + 1):
            try:
                return what(*args)
            except Exception as e:  # noqa: BLE001 - every failure is retried, then reported the same way
                if n == max_retries:
                    raise UploadFailed(n + 1, _reason(e)) from None
                time.sleep(min(30.0, BACKOFF_S * 2**n))

    def name(p: Path) -> str:
        return _join(key_prefix, p.relative_to(local_dir).as_posix())

    if resolve_uploader(uploader) == "s5cmd":
        last = [p for p in files if p.name == UPLOAD_LAST]
        for batch in ([p for p in files if p not in last], last):
            if batch:
                attempt(_s5cmd, [(p, f"s3://{bucket}/{name(p)}") for p in batch], region, endpoint_url)
    else:
        for p in files:
            attempt(s3.upload_file, str(p), bucket, name(p))
    stored = attempt(_listing, s3, bucket, key_prefix)
    short = [p.relative_to(local_dir).as_posix() for p in files
             if stored.get(p.relative_to(local_dir).as_posix()) != p.stat().st_size]
    if short:
        raise UploadFailed(1, f"verification: {len(short)} file(s) missing or of another size on the store, "
                              f"e.g. {short[0]}")
    return len(files)


def _s5cmd(pairs: list[tuple[Path, str]], region: str | None, endpoint_url: str | None) -> None:
    """One `s5cmd run` copying (local file, s3 URI) pairs in parallel; credentials reach it through the environment."""
    argv = ["s5cmd", *(["--endpoint-url", endpoint_url] if endpoint_url else []), "run"]
    env = dict(os.environ)
    if region:  # the bucket's region wins over where the job runs (else a 301 redirect)
        env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = region
    manifest = "".join(f"cp {shlex.quote(str(p))} {shlex.quote(uri)}\n" for p, uri in pairs)
    done = subprocess.run(argv, input=manifest, text=True, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"s5cmd exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}")


class Uploads:
    """A run's uploads: each checkpoint-N on a worker thread while training goes on, final/ once it is written.

    Inactive (every method does nothing) unless s3.enabled, and on every process but the main one. An upload that
    fails after its retries never stops training and never deletes anything: one line says so, the local copy stays,
    and summary() lists it (summary.json's `s3_failed_uploads`).
    """

    def __init__(self, recipe, main: bool = True, checkpoints: bool = True, final: bool = True):
        s3 = recipe.s3
        self.active = s3.enabled and main
        self.failed: list[str] = []
        self._s3, self._out = s3, Path(recipe.training.output_dir)
        self._checkpoints, self._final = checkpoints and s3.upload_checkpoints, final and s3.upload_final_model
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        if not self.active:
            return
        self._uploader = resolve_uploader(s3.uploader)
        what = " and ".join(w for w, on in (("checkpoints", self._checkpoints), ("final/", self._final)) if on)
        print(f"s3: uploading {what or 'nothing (upload_checkpoints and upload_final_model are off)'} to "
              f"{S3Uri(s3.bucket, _join(s3.prefix))}/ with {self._uploader}", flush=True)

    def checkpoint(self, local_dir: Path) -> None:
        """Queue checkpoint-N for upload to prefix/checkpoint-N/ and return at once.

        What is uploaded is a snapshot of hard links (no copy of the data), so a save_total_limit rotation that
        removes checkpoint-N meanwhile cannot pull files away mid-upload.
        """
        if not (self.active and self._checkpoints):
            return
        snapshot = self._out / _SNAPSHOTS / local_dir.name
        shutil.rmtree(snapshot, ignore_errors=True)
        try:
            shutil.copytree(local_dir, snapshot, copy_function=_link_or_copy)
        except OSError as e:  # e.g. the checkpoint is not where it should be: report it, train on
            shutil.rmtree(snapshot, ignore_errors=True)
            self._report(local_dir, UploadFailed(1, _reason(e)))
            return
        self._queue.put((local_dir, snapshot))
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="fai-rl-s3-upload", daemon=True)
            self._worker.start()

    def wait(self) -> None:
        """Block until every queued checkpoint is uploaded (or reported failed)."""
        if self.active and self._queue.unfinished_tasks:
            print(f"s3: waiting for {self._queue.unfinished_tasks} checkpoint upload(s) to finish", flush=True)
        self._queue.join()

    def final(self, final_dir: Path | None) -> None:
        """Wait for the checkpoints, then upload final/ to prefix/final/ in the foreground (failures recorded)."""
        if not self.active:
            return
        self.wait()
        with contextlib.suppress(OSError):
            (self._out / _SNAPSHOTS).rmdir()  # empty by now (the worker is idle); kept if not
        if self._final and final_dir is not None:
            self._upload(final_dir, final_dir, delete_after=False)

    def summary(self) -> dict:
        """What summary.json records: the local paths whose upload failed (empty when all went up)."""
        return {"s3_failed_uploads": list(self.failed)} if self.active else {}

    def callback(self):
        """A transformers TrainerCallback: on_save queues checkpoint-N (main process), on_train_end waits."""
        from transformers import TrainerCallback  # here: importing transformers at module level would pull in torch

        uploads = self

        class S3UploadCallback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    uploads.checkpoint(Path(args.output_dir) / f"checkpoint-{state.global_step}")

            def on_train_end(self, args, state, control, **kwargs):
                uploads.wait()

        return S3UploadCallback()

    def _work(self) -> None:
        while True:
            local_dir, snapshot = self._queue.get()
            try:
                self._upload(local_dir, snapshot, delete_after=self._s3.delete_local_after_upload)
            except Exception as e:  # noqa: BLE001 - the worker outlives any one upload, or wait() would hang
                self._report(local_dir, UploadFailed(1, _reason(e)))
            finally:
                self._queue.task_done()

    def _upload(self, local_dir: Path, source: Path, delete_after: bool) -> None:
        s3 = self._s3
        target = S3Uri(s3.bucket, _join(s3.prefix, local_dir.name))
        try:
            count = upload_dir(source, s3.bucket, target.key, s3.region, s3.endpoint_url, self._uploader,
                               s3.max_retries)
        except Exception as e:  # noqa: BLE001 - an upload never ends training
            failure = e if isinstance(e, UploadFailed) else UploadFailed(1, _reason(e))
            if source != local_dir and not local_dir.exists():
                os.replace(source, local_dir)  # rotated away meanwhile: the snapshot is the only copy left
            elif source != local_dir:
                shutil.rmtree(source, ignore_errors=True)
            self._report(local_dir, failure)
            return
        if source != local_dir:
            shutil.rmtree(source, ignore_errors=True)
        if delete_after:  # only now: the store was listed and holds every file at its size
            shutil.rmtree(local_dir, ignore_errors=True)
        print(f"s3: uploaded {local_dir.name} ({count} files) to {target}/"
              + (f"; deleted the local {local_dir.name}" if delete_after else ""), flush=True)


    def _report(self, local_dir: Path, failure: UploadFailed) -> None:
        self.failed.append(str(local_dir))
        print(f"s3: upload of {local_dir} {failure}; the data stays at {local_dir}", flush=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- resume and recipe checks


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
