"""Files on this machine: where fai-rl keeps what it caches (built-in models, s3:// downloads), and reading a user's
text file (a recipe, a data file) as UTF-8 with a file:line error for anything else."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The fai-rl cache root: $FAI_RL_HOME, else ~/.cache/fai-rl."""
    return Path(os.environ.get("FAI_RL_HOME") or Path.home() / ".cache" / "fai-rl").expanduser()


def read_utf8_text(path: Path, error: type[Exception], must_be: str) -> str:
    """`path`'s text as UTF-8 (a leading BOM dropped). UTF-16, binary (NUL bytes) or otherwise encoded bytes raise
    `error` naming path:line of the first bad byte, what the file looks like, and `must_be` (what the file should be)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        what = ("UTF-16 text, not UTF-8" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "a binary file"
                if b"\0" in data[:8192] else f"not UTF-8 (byte 0x{data[e.start]:02x})")
        raise error(f"{path}:{line}: {what}; {must_be} (re-save it as UTF-8).") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise error(f"{path}:{line}: a binary file (NUL bytes); {must_be}.")
    return text
