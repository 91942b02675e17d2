"""Every run's log file, as FAI-RL keeps one: output_dir/logs/train-<time>.log holds what the console showed.

The text is held in memory until the run really starts (recipe, data and resume point checked, RunDir.start done),
so a run refused by its checks writes nothing. Exactly one process owns the file: the command the user typed (it
tees its own output and, when it relaunches through accelerate, its children's); a process that finds FAI_RL_LOG
set (a --nohup child, whose output already goes to its log, or a launched rank) leaves it alone.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

LOG_ENV = "FAI_RL_LOG"  # set for child processes: the log that their output already reaches


def log_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "logs" / f"train-{time.strftime('%Y%m%d-%H%M%S')}.log"


class RunLog:
    """This process's stdout/stderr copied into the run's log file, from the moment `open` is called."""

    def __init__(self, output_dir: str | Path):
        self.path = log_path(output_dir)
        self._held = io.StringIO()
        self._file = None
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        os.environ[LOG_ENV] = str(self.path)  # children (accelerate ranks) must not open a second log

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
        else:
            self._held.write(text)

    def open(self) -> None:
        """The run has started: create the file with everything shown so far, and say where it is."""
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._file.write(self._held.getvalue())
        self._held = io.StringIO()
        print(f"log: {self.path}", flush=True)

    def close(self) -> None:
        sys.stdout, sys.stderr = self._streams
        os.environ.pop(LOG_ENV, None)
        if self._file is not None:
            self._file.close()


class _Tee(io.TextIOBase):
    def __init__(self, stream, log: RunLog):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


_CURRENT: RunLog | None = None


def start_log(output_dir: str | Path) -> RunLog | None:
    """Tee this process's output for its run (None when another process owns the log)."""
    global _CURRENT
    if os.environ.get(LOG_ENV):
        return None
    _CURRENT = RunLog(output_dir)
    return _CURRENT


def run_started() -> None:
    """Called once the run dir is written: the log file appears now (a no-op where this process owns no log)."""
    if _CURRENT is not None:
        _CURRENT.open()


def stop_log() -> None:
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
        _CURRENT = None


def call_teed(command: list[str], env: dict[str, str], started: Path, on_start=None, own_group: bool = False) -> int:
    """Run `command` with its output copied through this process's (teed) stdout; the log opens once `started`
    (the run's recipe.resolved.yaml) is written by a child after this call began. `on_start(proc)` is told the child;
    `own_group`: the child leads a process group of its own (a terminal's Ctrl-C does not reach it)."""
    began = time.time()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            process_group=0 if own_group else None)
    assert proc.stdout is not None
    if on_start is not None:
        on_start(proc)
    try:
        for raw in iter(proc.stdout.readline, b""):
            if _CURRENT is not None and _CURRENT._file is None and _mtime(started) >= began - 0.5:
                _CURRENT.open()
            sys.stdout.write(raw.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    except KeyboardInterrupt:
        proc.terminate()
        raise
    return proc.wait()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
