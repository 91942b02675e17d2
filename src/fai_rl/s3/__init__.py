"""S3 and S3-compatible stores: s3:// datasets and model dirs are downloaded, checkpoints and final/ uploaded.

The recipe keys and the layout are Roblox FAI-RL's (`s3:` section; s3://bucket/prefix/checkpoint-N/ and .../final/;
`model.s3_region`, `data.datasets[].s3_endpoint_url`, ...). What this adds to its uploader: every file is retried with
backoff and the upload is verified against the store before a local copy may be deleted; a failed upload never stops
training and never deletes anything (one line, and summary.json's `s3_failed_uploads`); trainer_state.json goes last,
so a checkpoint on the store that holds it is complete, which is what `--resume` looks for there.

Credentials come only from boto3's own chain (AWS_* environment variables, ~/.aws, an instance role); nothing here
reads, prints or writes them. boto3 is imported on first use (`pip install 'fai-rl[s3]'`); transformers only for
the Trainer callback, so recipe rules and data loading can import this module cheaply.

The parts live in modules by what they do: store (s3:// URIs, the client, downloads into the cache), upload (a run's
checkpoint and final/ uploads), resume (--resume from the store) and checks (the recipe rule); every name is
importable from here.
"""

from fai_rl.errors import BackendError
from fai_rl.s3.checks import check_s3
from fai_rl.s3.resume import fetch_resume_checkpoint
from fai_rl.s3.store import (
    FILE_SUFFIXES,
    SENTINEL,
    UPLOAD_LAST,
    S3Uri,
    cache_root,
    client,
    download_dir,
    download_file,
    parse_uri,
)
from fai_rl.s3.upload import BACKOFF_S, UploadFailed, Uploads, resolve_uploader, upload_dir

# BACKOFF_S is read where upload_dir lives: a test that shortens it patches fai_rl.s3.upload.BACKOFF_S
__all__ = [
    "BACKOFF_S", "FILE_SUFFIXES", "SENTINEL", "UPLOAD_LAST",
    "BackendError",  # what the store's failures raise; kept importable from here as before the split
    "S3Uri", "UploadFailed", "Uploads", "cache_root", "check_s3", "client", "download_dir", "download_file",
    "fetch_resume_checkpoint", "parse_uri", "resolve_uploader", "upload_dir",
]
