"""Where fai-rl keeps what it caches on this machine (built-in models, s3:// downloads)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The fai-rl cache root: $FAI_RL_HOME, else ~/.cache/fai-rl."""
    return Path(os.environ.get("FAI_RL_HOME") or Path.home() / ".cache" / "fai-rl").expanduser()
