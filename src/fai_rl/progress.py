"""What a person watching a run sees, and the handle `fai-rl-runs` holds: one progress line, the run's state file,
and a clean stop on request.

RunDir.log_metrics (the one writer of metrics rows, every backend and algorithm) hands each row here, and the local
trainers tick every optimizer step. On a terminal one live line is redrawn in place (step/total, elapsed, ETA, it/s,
the algorithm's headline metrics); every metrics row also prints one plain line, which is all a --nohup log file or a
pipe gets, so a log never holds carriage returns. When rows are far apart (a slow GRPO step on a GPU) a plain line
still appears every HEARTBEAT_S seconds.

output_dir/run_state.json says where the run is (state, pid, step, total, ETA, headline metrics); `fai-rl-runs`
reads it. A stop is asked for by SIGTERM, a first Ctrl-C, or the file output_dir/STOP (what `fai-rl-runs stop`
writes, so a run on another node of a shared file system can be stopped too); the training loop then saves a
checkpoint and ends, and the state becomes `stopped`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

STATE_FILE = "run_state.json"
STOP_FILE = "STOP"
HEARTBEAT_S = 60.0  # longest silence in a log between two progress lines
REDRAW_S = 0.25  # live line: at most this often
STATE_EVERY_S = 2.0  # run_state.json between logged rows: at most this often


class RunStopped(Exception):
    """The run ended early on a stop request, after writing a resumable checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: str | None = None):
        super().__init__(f"stopped at step {step}")
        self.step, self.checkpoint = step, checkpoint


_STOP_SIGNALLED = False
_PROCESS_STARTED = time.time()  # a STOP file older than this process is an earlier run's, answered already


def _on_signal(signum, frame) -> None:
    global _STOP_SIGNALLED
    if _STOP_SIGNALLED and signum == signal.SIGINT:  # a second Ctrl-C: quit now
        raise KeyboardInterrupt
    _STOP_SIGNALLED = True
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(f"\n{name}: stopping after this step, once a checkpoint is written (Ctrl-C again to quit at once)",
          file=sys.stderr, flush=True)


def install_stop_handlers():
    """SIGTERM and the first SIGINT ask for a clean stop instead of killing the process (main thread only); returns
    a function that puts the previous handlers back (a run called in-process, as tests do, leaves none behind)."""
    global _STOP_SIGNALLED
    _STOP_SIGNALLED = False
    try:
        before = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (a test calling train in a thread): keep the defaults
        return lambda: None

    def restore() -> None:
        for sig, handler in before.items():
            signal.signal(sig, handler)

    return restore


def stop_requested(output_dir: str | Path) -> bool:
    """Whether this run was asked to stop: a signal, or output_dir/STOP."""
    return _STOP_SIGNALLED or (Path(output_dir) / STOP_FILE).exists()


def clock(seconds: float | None) -> str:
    """h:mm:ss (m:ss under an hour); '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """The live line and run_state.json of one run (main process only)."""

    def __init__(self, output_dir: str | Path, headline: tuple[str, ...] = ()):
        self.path = Path(output_dir)
        self.headline = headline
        self.total: int | None = None
        self.initial = 0  # the step a resumed run starts from: its rate counts only this run's steps
        self.step = 0
        self.started = time.time()
        self.latest: dict[str, float] = {}
        self._live = sys.__stderr__ is not None and sys.__stderr__.isatty()
        self._drawn = 0.0
        self._printed = time.time()
        self._stated = 0.0
        self._active = False
        self._prepared = False  # only the main process's RunDir.start prepares it: other ranks show and write nothing

    # ---- what the loops call
    def prepare(self, headline: tuple[str, ...]) -> None:
        """The run dir exists (the model is not loaded yet): state `starting`; a STOP file of an earlier stop goes (one
        written since this process started, by `fai-rl-runs stop` while the run was starting, stays: it is for us)."""
        self.headline, self._prepared = headline, True
        stop = self.path / STOP_FILE
        if stop.exists() and stop.stat().st_mtime < _PROCESS_STARTED:
            stop.unlink(missing_ok=True)
        self.write_state("starting")

    def begin(self, total: int | None, initial: int = 0) -> None:
        """Training steps begin (model and data loaded): the clock for it/s and ETA starts here."""
        if not self._prepared:
            return
        self.total, self.initial, self.step = total, initial, initial
        self.started = self._printed = time.time()
        self._active = True
        self.write_state("running")

    def tick(self, step: int, total: int | None = None) -> None:
        """An optimizer step finished: redraw the live line; in a log, a heartbeat line after a long silence."""
        if not self._prepared:
            return
        if not self._active:
            self.begin(total, step - 1)
        self.step, self.total = step, total or self.total
        now = time.time()
        if now - self._stated >= STATE_EVERY_S:
            self.write_state("running")
        if self._live and now - self._drawn >= REDRAW_S:
            self._draw(self.line())
        elif not self._live and now - self._printed >= HEARTBEAT_S:
            self._print(self.line())

    def metrics(self, step: int, row: dict, total: int | None = None) -> None:
        """A metrics row was logged: remember its headline values and print one plain line."""
        if not self._prepared:
            return
        if not self._active:
            self.begin(total, step)
        self.step, self.total = max(step, self.step), total or self.total
        shown = {k: v for k, v in row.items() if self._shown(k)}
        self.latest.update(shown)
        if shown:  # a row of run totals only (HF's train_runtime at the end) says nothing new
            self._print(self.line(row))
        self.write_state("running")

    def finish(self, state: str) -> None:
        """The run ended: finished, stopped or failed."""
        if not self._prepared:
            return
        if self._live and self._drawn:
            sys.__stderr__.write("\r\x1b[K")
            sys.__stderr__.flush()
        self.write_state(state)
        self._active = False
        (self.path / STOP_FILE).unlink(missing_ok=True)  # the request is answered

    # ---- numbers and text
    def rate(self) -> float | None:
        done, spent = self.step - self.initial, time.time() - self.started
        return done / spent if done > 0 and spent > 0 else None

    def eta_s(self) -> float | None:
        rate = self.rate()
        return (self.total - self.step) / rate if rate and self.total else None

    def line(self, row: dict | None = None) -> str:
        """`step 12/40 [30%]  0:41<1:36  0.29 it/s  loss 1.23  eval_loss 1.31`: this row's headline metrics, else the
        latest ones."""
        total = self.total or "?"
        pct = f" [{100 * self.step / self.total:.0f}%]" if self.total else ""
        rate = self.rate()
        speed = (f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it") if rate else "- it/s"
        shown = self._ordered({k: v for k, v in (row or {}).items() if self._shown(k)} or self.latest)
        body = "  ".join(f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
        return (f"step {self.step}/{total}{pct}  {clock(time.time() - self.started)}<{clock(self.eta_s())}  "
                f"{speed}  {body}").rstrip()

    def _ordered(self, values: dict) -> dict:
        """Headline metrics in the algorithm's own order (the registry's), the rest after them."""
        order = {k: i for i, k in enumerate(self.headline)}
        return dict(sorted(values.items(), key=lambda kv: order.get(kv[0], len(order))))

    def _shown(self, key: str) -> bool:  # a workflow's per-role rewards stand in where no headline metric is logged
        return key in self.headline or key.removeprefix("eval_").split("/")[0] == "reward"

    def _draw(self, text: str) -> None:
        width = _columns()
        sys.__stderr__.write("\r\x1b[K" + text[: width - 1])
        sys.__stderr__.flush()
        self._drawn = time.time()

    def _print(self, text: str) -> None:
        if self._live and self._drawn:
            sys.__stderr__.write("\r\x1b[K")
            sys.__stderr__.flush()
        print(text, flush=True)  # the console and the run's log file (fai_rl.runlog)
        self._printed = time.time()
        if self._live:
            self._draw(text)

    def write_state(self, state: str) -> None:
        """output_dir/run_state.json, written whole and renamed into place (a reader never sees half of it)."""
        eta = self.eta_s()
        latest = self._ordered(self.latest)  # fai-rl-runs shows the first ones
        self._stated = time.time()
        data = {
            "state": state, "pid": os.getpid(), "host": socket.gethostname(), "step": self.step, "total": self.total,
            "started": self.started, "updated": time.time(), "eta_s": round(eta, 1) if eta is not None else None,
            "it_per_s": self.rate(), "headline": latest,
        }
        if not self.path.is_dir():
            return
        tmp = self.path / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / STATE_FILE)


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


def read_state(output_dir: str | Path) -> dict | None:
    """run_state.json of a run dir (None when there is none or it cannot be read)."""
    try:
        return json.loads((Path(output_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def say(what: str) -> None:
    """One line for a long wait that is not a training step (loading a model, tokenising, a download); rank 0 only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"... {what}", flush=True)
