"""Read one `data.datasets[i]` entry into rows, remembering where each row came from.

Local JSONL/CSV files are parsed here rather than by `datasets` so a bad line is reported as `file.jsonl:17` with the
reason; parquet, dataset dirs and hub datasets go through `datasets`, and their rows are named `name[split]:index`.
"""

from __future__ import annotations

import csv
import io
import logging
import json
from dataclasses import dataclass
from pathlib import Path

from fai_rl.config.schema import DatasetSpec
from fai_rl.data.tasks import is_builtin_task, load_builtin_task
from fai_rl.errors import DataError
from fai_rl.paths import read_utf8_text

MAX_REPORTED = 10  # bad rows listed before "... and N more"


@dataclass
class Source:
    """The rows of one dataset entry, and how to name row i in a message."""

    key: str  # dotted recipe key, e.g. data.datasets[0]
    spec: DatasetSpec
    rows: list[dict]
    origins: list[str] | None  # file:line per row when known
    label: str  # used as `label:index` when origins is None

    def origin(self, i: int) -> str:
        return self.origins[i] if self.origins is not None else f"{self.label}:{i}"

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []


def load_source(spec: DatasetSpec, key: str) -> Source:
    """Load the rows of one dataset entry; raises DataError naming the key, file:line or the loader's reason."""
    try:
        path = Path(spec.name).expanduser()
        path.is_file()  # ENAMETOOLONG and kin raise here, not in is_file's False
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: ~user that does not exist
        raise DataError(f"{key}.name: '{spec.name[:200]}' is not a usable path ({e}); check the value.") from None
    if is_builtin_task(spec.name):
        try:
            rows, origins, label = load_builtin_task(spec.name, spec.split), None, f"{spec.name}[{spec.split}]"
        except DataError as e:
            raise DataError(f"{key}.split: {e.problems[0]}") from None
    elif spec.name.startswith("s3://"):
        rows, origins = _read_s3(spec, key)
        label = spec.name
    elif path.is_file():
        rows, origins = _read_file(path, key)
        label = str(path)
    elif path.is_dir():
        rows, origins, label = _read_dir(path, spec, key), None, f"{path}[{spec.split}]"
    elif spec.name.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        raise DataError(f"{key}.name: '{spec.name}' does not exist; check the path (relative to where you run).")
    else:
        rows, origins, label = _read_hub(spec, key), None, f"{spec.name}[{spec.split}]"
    if spec.max_samples is not None:
        rows = rows[: spec.max_samples]
        origins = origins[: spec.max_samples] if origins is not None else None
    if not rows:
        raise DataError(f"{key}.name: '{spec.name}' has no rows; point it at data with at least one example.")
    return Source(key=key, spec=spec, rows=rows, origins=origins, label=label)


def _read_file(path: Path, key: str) -> tuple[list[dict], list[str] | None]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_json(path, key)
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        rows, origins = [], []
        try:
            for row in reader:
                if None in row:  # more fields than the header names (fewer: the row check names the empty column)
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header's "
                                    f"{len(reader.fieldnames or [])} columns; fix the line (quote commas in text).")
                rows.append(dict(row))
                origins.append(f"{path}:{reader.line_num}")
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix the file.") from None
        return rows, origins
    if suffix == ".parquet":
        import datasets

        quiet = logging.getLogger("datasets")  # it logs its own error line before raising: ours says it
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            return _to_rows(datasets.Dataset.from_parquet(str(path))), None
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError and more for a corrupt or truncated file
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: not a readable parquet file ({reason}); write it again (e.g. "
                            "datasets.Dataset.to_parquet) or use .jsonl.") from None
        finally:
            quiet.setLevel(level)
    raise DataError(f"{key}.name: '{path}' is a {suffix or 'suffix-less'} file; use .jsonl, .json, .csv or .parquet.")


def _read_s3(spec: DatasetSpec, key: str) -> tuple[list[dict], list[str] | None]:
    """An s3:// file, downloaded (cached until its ETag changes) and read like a local one; rows named by the URI."""
    from fai_rl.s3 import FILE_SUFFIXES, download_file

    if Path(spec.name).suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"{key}.name: '{spec.name}' is not a {', '.join(FILE_SUFFIXES)} file; an s3:// dataset must "
                        "be one file of those types.")
    local = download_file(spec.name, spec.s3_region, spec.s3_endpoint_url, key=f"{key}.name")
    try:
        rows, origins = _read_file(local, key)
    except DataError as e:
        raise DataError([p.replace(str(local), spec.name) for p in e.problems]) from None
    return rows, [o.replace(str(local), spec.name, 1) for o in origins] if origins is not None else None


def _read_text(path: Path) -> str:
    """A data file's text: UTF-8 (a leading BOM dropped); a binary or otherwise encoded file is named by file:line."""
    return read_utf8_text(path, DataError, "data files are UTF-8 text")


def _read_json(path: Path, key: str) -> tuple[list[dict], list[str]]:
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file.") from None
        bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
        if bad:
            raise DataError(f"{path}: item {bad[0]} is not an object; every example must be a JSON object.")
        return data, [f"{path}[{i}]" for i in range(len(data))]
    rows, origins, problems = [], [], []
    # split("\n"), not splitlines(): U+2028/U+2029/U+0085 may stand raw inside JSON strings and do not end a line
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line.")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{n}: a {type(row).__name__}, not an object; each line must be one JSON object.")
            continue
        rows.append(row)
        origins.append(f"{path}:{n}")
    if problems:
        raise DataError(limit_problems(problems))
    return rows, origins


def _read_dir(path: Path, spec: DatasetSpec, key: str) -> list[dict]:
    import datasets

    try:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path), spec.subset)
    except Exception as e:  # datasets raises many types; the message is what the user needs
        raise DataError(f"{key}.name: cannot read the dataset dir '{path}': {e}") from None
    return _to_rows(_pick_split(loaded, spec, key))


def _read_hub(spec: DatasetSpec, key: str) -> list[dict]:
    import datasets

    try:
        loaded = datasets.load_dataset(spec.name, spec.subset, split=spec.split)
    except Exception as e:
        raise DataError(
            f"{key}.name: '{spec.name}' is not a local file, a dataset dir or a built-in task, and loading it "
            f"from the hub failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "check the name and your connection, or point it at local data."
        ) from None
    return _to_rows(loaded)


def _pick_split(loaded, spec: DatasetSpec, key: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if spec.split not in loaded:
            raise DataError(
                f"{key}.split: '{spec.split}' is not a split of '{spec.name}'; use one of {', '.join(loaded)}."
            )
        return loaded[spec.split]
    return loaded


def _to_rows(ds) -> list[dict]:
    return ds.to_list()


def limit_problems(problems: list[str]) -> list[str]:
    """Cap a list of row problems at MAX_REPORTED lines."""
    if len(problems) <= MAX_REPORTED:
        return problems
    return [*problems[:MAX_REPORTED], f"... and {len(problems) - MAX_REPORTED} more"]
