"""--push-to-hub: the exported dir uploaded with huggingface_hub (`create_repo`, then `upload_folder`).

The token is read from HF_TOKEN (else HUGGING_FACE_HUB_TOKEN) and handed to HfApi only: it is never written into a
file, printed, or kept in an error message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fai_rl.errors import BackendError, UsageError

TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def hub_token() -> str:
    """The token from the environment; UsageError naming HF_TOKEN when there is none."""
    for name in TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    raise UsageError("--push-to-hub needs a Hugging Face token with write access: export HF_TOKEN=... (read from the "
                     "environment only, never written anywhere); create one at https://huggingface.co/settings/tokens.")


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"--push-to-hub: '{repo_id}' is not a hub repo id; use OWNER/NAME, e.g. my-org/qwen3-sft.")


def push(folder: Path, repo_id: str, private: bool, token: str) -> str:
    """Create the model repo (if needed) and upload `folder` as one commit; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload model exported by fai-rl-export")
    except Exception as e:  # noqa: BLE001 - HTTP, auth and network failures all end the same way
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackendError(f"--push-to-hub {repo_id}: the upload failed ({_scrub(reason, token)[:300]}); the export "
                           f"itself is complete in {folder}: upload it with `hf upload {repo_id} {folder}`, or run "
                           "the same command again with --overwrite.") from None
    return str(url)


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
