"""Read back an offline wandb run's history from its .wandb file, as `wandb sync` would upload it.

wandb 0.31 ships no Python reader of its transaction log (the old wandb.sdk.internal.datastore is gone with the Go
core), so this is the format, read with wandb's own protobuf: a 7-byte header (b":W&B", magic, version), then
LevelDB-log records in 32 KiB blocks (7-byte record header: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4),
each whole record a serialised wandb_internal_pb2.Record.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    out, pos, pending = [], 7, b""
    while pos + _HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def history(output_dir: Path) -> dict[int, dict]:
    """step -> {key: value} of the one offline run under output_dir/wandb (a later log at the same step merges)."""
    (run_file,) = Path(output_dir).glob("wandb/offline-run-*/run-*.wandb")
    steps: dict[int, dict] = {}
    for record in records(run_file):
        if record.WhichOneof("record_type") != "history":
            continue
        row = steps.setdefault(record.history.step.num, {})
        for item in record.history.item:
            row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return steps
