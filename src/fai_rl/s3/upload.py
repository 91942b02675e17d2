"""A run's uploads: each checkpoint-N on a worker thread while training goes on, then final/; every file retried with
backoff and the upload verified against the store before a local copy may be deleted."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

from fai_rl.errors import BackendError
from fai_rl.s3.store import SENTINEL, UPLOAD_LAST, S3Uri, _join, _listing, _reason, client

BACKOFF_S = 1.0  # first wait between two attempts; doubles after each, at most 30 s
_SNAPSHOTS = ".s3-uploading"  # output_dir/.s3-uploading/checkpoint-N: hard links of a checkpoint being uploaded


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

    marker = _join(key_prefix, SENTINEL)  # written last: the store's copy is complete when it is there
    with contextlib.suppress(Exception):  # an earlier upload's marker, while this one goes up (a store that cannot
        s3.delete_object(Bucket=bucket, Key=marker)  # be reached fails below, with the files' own reason)

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
    manifest = {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in files}
    attempt(lambda: s3.put_object(Bucket=bucket, Key=marker, Body=json.dumps(manifest).encode()))
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


def _wait_for_every_process() -> None:
    """A barrier across the run's processes (nothing with one process or without torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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
                # every process writes its own files into checkpoint-N (rng_state_N.pth, TRL's per-rank state) and
                # only the main one uploads: wait until all have saved, or the snapshot may miss another rank's
                _wait_for_every_process()
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
