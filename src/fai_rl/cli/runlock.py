"""One live run per output_dir: the run's launching process holds output_dir/run.lock for as long as it lives.

The lock is an exclusive `flock` on the file, which the kernel drops when the holder dies however it dies (kill -9, a
lost node), so a dead run's lock file never blocks the next launch. The file records the holder's pid, host, start
time and a token; the token is exported to every process the run starts (accelerate ranks), which therefore know the
lock is their own run's and do not refuse each other. A lock file left flock-held by an orphan of a dead holder
(a forked worker that outlived it) is broken when the recorded pid is gone on this host: the file is replaced, the
orphan keeps a lock on an unlinked inode that nobody looks at.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

from fai_rl.errors import FaiRLError, RecipeError

LOCK_NAME = "run.lock"
LOCK_ENV = "FAI_RL_RUN_LOCK"  # the token of the run this process belongs to


class RunDirBusy(FaiRLError):
    """Another live run holds the output_dir."""


def check_output_path(output_dir: str) -> None:
    """RecipeError when training.output_dir can never be a directory (a NUL byte, a name too long, a file on the way);
    creates nothing (a --dry-run says so too)."""
    where = f"training.output_dir: '{output_dir[:200]}'"
    if "\0" in output_dir:
        raise RecipeError(f"{where} holds a NUL byte; give a directory path.")
    try:
        path = Path(output_dir).expanduser()
        for above in [path, *path.parents]:
            if above.exists():
                if not above.is_dir():
                    raise RecipeError(f"{where}: {above} is a file, so the run's directory cannot be made there; "
                                      "choose another output_dir.")
                break
    except (OSError, RuntimeError) as e:  # ENAMETOOLONG, ~user that does not exist
        raise RecipeError(f"{where} is not a usable path ({e}); choose another output_dir.") from None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def read_holder(output_dir: str | Path) -> dict:
    """What run.lock says about its holder ({} when absent or unreadable)."""
    try:
        return json.loads((Path(output_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _busy(output_dir: Path, holder: dict) -> RunDirBusy:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return RunDirBusy(
        f"training.output_dir: '{output_dir}' is in use by a live run (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, started {when}); wait for it to end, stop it (kill {holder.get('pid', '?')}), "
        "or choose another output_dir. overwrite_output_dir never replaces a run that is still running."
    )


def _orphaned(holder: dict) -> bool:
    """The lock is flock-held but its recorded holder is dead on this host (an orphan inherited the lock)."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


class RunLock:
    """The lock on one output_dir; `acquire` takes it (or joins the run this process belongs to), `release` frees it
    and removes the directories that only it had created."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self._fd: int | None = None
        self._created: Path | None = None  # the topmost directory made for the lock

    def check(self) -> None:
        """Refuse (RunDirBusy) when another live run holds the dir; takes nothing (a --nohup parent's look)."""
        if not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._try_lock(fd)
        except (_Joined, _Stale):
            pass
        finally:
            os.close(fd)

    def _try_lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.output_dir)
            if holder.get("token") and holder.get("token") == os.environ.get(LOCK_ENV):
                raise _Joined from None
            if _orphaned(holder):
                raise _Stale from None
            raise _busy(self.output_dir, holder) from None

    def acquire(self) -> RunLock:
        """Take the lock (RunDirBusy when a live run holds it); a process of the holding run takes nothing."""
        missing = [p for p in [self.output_dir, *self.output_dir.parents] if not p.exists()]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing[-1] if missing else None
        try:
            for _ in range(10):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    self._try_lock(fd)
                except _Joined:
                    os.close(fd)
                    return self
                except _Stale:
                    os.close(fd)
                    self.path.unlink(missing_ok=True)
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                try:  # a breaker may have replaced the file between open and flock: lock the file the path names
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                token = uuid.uuid4().hex
                info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "token": token}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
                os.fsync(fd)
                self._fd = fd
                os.environ[LOCK_ENV] = token
                return self
            raise RunDirBusy(f"training.output_dir: could not take the lock {self.path}; try again.")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Free the lock; remove what acquire created when nothing else was written there (a refused run)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            os.environ.pop(LOCK_ENV, None)
        if self._created is not None:
            for d in [self.output_dir, *self.output_dir.parents]:
                try:
                    d.rmdir()  # only empty ones
                except OSError:
                    break
                if d == self._created:
                    break
            self._created = None


class _Joined(Exception):
    """The lock is held by the run this process belongs to."""


class _Stale(Exception):
    """The lock is held, but its recorded holder is dead."""
