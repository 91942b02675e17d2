"""`fai-rl-runs`: the handle on runs, background (--nohup) or not.

    fai-rl-runs list [DIR]            runs under DIR (default runs/): state, step, ETA, headline metric
    fai-rl-runs follow RUN            print RUN's log and follow it until the run ends (Ctrl-C leaves the run alone)
    fai-rl-runs stop RUN [--no-wait]  ask RUN to stop: it saves a checkpoint first; --resume continues it later

RUN is a run's output_dir. What a run is doing comes from output_dir/run_state.json (fai_rl.progress), written by
the training process at each logged step and when it ends; a run whose process is gone while its state still says
running died without a word (killed, out of memory) and is listed as failed. A stop is a file, output_dir/STOP, that
the training loop looks for after every step, so it works for every rank of a multi-process run and from another
machine that shares the file system.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from fai_rl.cli import report_errors
from fai_rl.cli.runlock import pid_alive
from fai_rl.errors import UsageError

ACTIVE = ("starting", "running")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fai-rl-runs", description="List, follow and stop fai-rl runs.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="runs under a directory with state, step, ETA and headline metric")
    ls.add_argument("dir", nargs="?", default="runs", help="where to look (default: runs)")
    follow = sub.add_parser("follow", help="print a run's log and follow it until the run ends")
    follow.add_argument("run", help="the run's output_dir")
    follow.add_argument("--lines", type=int, default=20, help="lines of the log shown first (default 20; 0: all)")
    stop = sub.add_parser("stop", help="stop a run cleanly: a checkpoint is written before it exits")
    stop.add_argument("run", help="the run's output_dir")
    stop.add_argument("--no-wait", action="store_true", help="ask and return; do not wait for the run to stop")
    stop.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for it (default 600)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    commands = {"list": _list, "follow": _follow, "stop": _stop}
    return report_errors("fai-rl-runs", lambda: commands[args.command](args))


# ---- what a run dir says about itself
def run_status(run: Path) -> dict:
    """{state, step, total, eta_s, headline, pid} of the run in `run`; state one of starting, running, finished,
    stopped, failed, unknown."""
    from fai_rl.progress import read_state

    state = read_state(run) or {}
    status = {"state": state.get("state", "unknown"), "step": state.get("step"), "total": state.get("total"),
              "eta_s": state.get("eta_s"), "headline": state.get("headline") or {}, "pid": state.get("pid")}
    here = state.get("host") in (None, socket.gethostname())
    launched = _live_pid_file(run)  # a --nohup child that has not written its state yet (still loading)
    if launched and (status["state"] not in ACTIVE or not _alive(status["pid"])):
        status.update(state="starting", pid=launched)
    elif status["state"] in ACTIVE and here and not _alive(status["pid"]):
        status["state"] = "failed"  # the process is gone without saying so: killed, out of memory
    elif status["state"] == "unknown" and (run / "final").is_dir():
        status["state"] = "finished"
    if status["state"] == "running" and status["eta_s"] is not None and state.get("updated"):
        status["eta_s"] = max(0.0, status["eta_s"] - (time.time() - state["updated"]))
    return status


def _alive(pid) -> bool:
    """Whether `pid` (as read from a run's state, so maybe missing or not an int) is a live process here."""
    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def _live_pid_file(run: Path) -> int | None:
    """The pid of the newest --nohup launch of `run` when that process is alive."""
    files = sorted((run / "logs").glob("train-*.pid"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    try:
        pid = int(files[-1].read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def find_runs(root: Path, depth: int = 4) -> list[Path]:
    """Run dirs under `root` (root itself included): those holding run_state.json, recipe.resolved.yaml or logs/."""
    from fai_rl.progress import STATE_FILE

    found, frontier = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in frontier:
            if any((d / m).exists() for m in (STATE_FILE, "recipe.resolved.yaml")) or list(d.glob("logs/train-*")):
                found.append(d)
                continue
            nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        frontier = nxt
    return sorted(found)


def latest_log(run: Path) -> Path | None:
    logs = sorted((run / "logs").glob("train-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def _run_dir(name: str) -> Path:
    run = Path(name)
    if not run.is_dir():
        raise UsageError(f"RUN: '{name}' is not a directory; give a run's output_dir (fai-rl-runs list shows them).")
    return run


# ---- the commands
def _list(args) -> int:
    from fai_rl.progress import clock

    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"DIR: '{root}' is not a directory; give the folder holding your runs' output_dirs.")
    rows = [("run", "state", "step", "eta", "headline")]
    for run in find_runs(root):
        s = run_status(run)
        step = f"{s['step']}/{s['total'] or '?'}" if s["step"] is not None else "-"
        eta = clock(s["eta_s"]) if s["state"] == "running" else "-"
        head = "  ".join(f"{k} {v:.4g}" for k, v in list(s["headline"].items())[:2])
        rows.append((str(run), s["state"], step, eta, head or "-"))
    if len(rows) == 1:
        print(f"no runs under {root}")
        return 0
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], width, strict=True)) + "  " + r[4])
    return 0


def _follow(args) -> int:
    run = _run_dir(args.run)
    log = latest_log(run)
    if log is None:
        raise UsageError(f"RUN: '{run}' has no logs/train-*.log yet; is it a run's output_dir?")
    text = log.read_text(encoding="utf-8", errors="replace")
    shown = text.splitlines(keepends=True)[-args.lines:] if args.lines else [text]
    sys.stdout.write("".join(shown))
    sys.stdout.flush()
    pos = len(text.encode("utf-8", errors="replace"))
    try:
        while True:
            with log.open("rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
            if chunk:
                pos += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            elif run_status(run)["state"] not in ACTIVE:
                print(f"[fai-rl-runs: the run is {run_status(run)['state']}]")
                return 0
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0  # leaves the run alone


def _stop(args) -> int:
    from fai_rl.artifacts import checkpoints
    from fai_rl.progress import STOP_FILE

    run = _run_dir(args.run)
    status = run_status(run)
    if status["state"] not in ACTIVE:
        print(f"{run}: not running ({status['state']}); nothing to stop")
        return 0
    (run / STOP_FILE).write_text(f"asked by fai-rl-runs stop at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    print(f"{run}: asked to stop; it saves a checkpoint after the step it is on, then exits")
    if args.no_wait:
        return 0
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        status = run_status(run)
        if status["state"] not in ACTIVE:
            break
        time.sleep(0.5)
    else:
        print(f"{run}: still {status['state']} after {args.timeout:g} s; it stops at the end of its current step "
              f"(check with: fai-rl-runs list {run.parent})")
        return 1
    ckpt = checkpoints(run)
    where = f"; checkpoint: {ckpt[-1]}" if ckpt else ""
    print(f"{run}: {status['state']} at step {status['step']}{where}")
    return 0 if status["state"] in ("stopped", "finished") else 1


if __name__ == "__main__":
    sys.exit(main())
