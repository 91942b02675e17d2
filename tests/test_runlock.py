"""One live run per output_dir (fai_rl.cli.runlock): a second launch is refused while the first lives, even with
overwrite_output_dir, and accepted once the first is dead (kill -9 leaves its lock file behind: it does not block)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, tiny_recipe

from fai_rl.cli.runlock import LOCK_ENV, RunLock
from fai_rl.cli.train import main


def test_a_live_run_owns_its_dir_and_a_dead_ones_lock_does_not_block(write_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    path = write_recipe(tiny_recipe(out, training={"max_steps": 100000, "save_steps": 100000, "logging_steps": 1,
                                                   "overwrite_output_dir": True}))
    first = subprocess.Popen([sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(path)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists():  # training: the lock is taken before anything is written
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.2)
        holder = json.loads((out / "run.lock").read_text())
        assert holder["pid"] == first.pid

        assert main(["--recipe", str(path), "training.max_steps=1"]) == 2  # overwrite_output_dir: true
        err = capsys.readouterr().err
        assert f"'{out}' is in use by a live run (pid {first.pid} on" in err and "Traceback" not in err, err
        assert (out / "recipe.resolved.yaml").exists() and (out / "metrics.jsonl").exists()  # nothing deleted
        assert main(["--nohup", "--recipe", str(path)]) == 2  # the detaching launcher looks too
        assert f"pid {first.pid}" in capsys.readouterr().err
        assert not list((out / "logs").glob("train-*.pid"))
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert (out / "run.lock").exists()  # kill -9 left it; the kernel dropped its flock

    assert main(["--recipe", str(path), "training.max_steps=1"]) == 0, capsys.readouterr()
    assert [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())][-1] == 1
    assert not (out / "run.lock").exists() and LOCK_ENV not in os.environ  # released at the end


def test_processes_of_one_run_join_its_lock_and_a_refused_lock_leaves_no_dir(tmp_path):
    out = tmp_path / "a" / "run"
    lock = RunLock(out).acquire()
    try:
        probe = "from fai_rl.cli.runlock import RunLock; RunLock({!r}).acquire(); print('ok')".format(str(out))
        joined = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
        assert joined.returncode == 0 and joined.stdout.strip() == "ok", joined.stderr  # an accelerate rank
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                               env={k: v for k, v in os.environ.items() if k != LOCK_ENV})
        assert other.returncode == 1 and f"(pid {os.getpid()} on" in other.stderr  # another run
    finally:
        lock.release()
    assert not (tmp_path / "a").exists()  # acquire made a/run for the lock; release removed them, empty


def test_a_lock_kept_by_an_orphan_of_a_dead_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = ("import os, time\nfrom fai_rl.cli.runlock import RunLock\nRunLock({!r}).acquire()\n"
              "if os.fork() == 0:\n    time.sleep(5)\n    os._exit(0)\nos._exit(0)\n").format(str(out))
    subprocess.run([sys.executable, "-c", holder], check=True, cwd=ROOT,  # its forked child outlives it, flock held
                   env={k: v for k, v in os.environ.items() if k != LOCK_ENV})
    dead = json.loads((out / "run.lock").read_text())["pid"]
    lock = RunLock(out).acquire()  # the recorded holder is dead on this host: the file is replaced
    try:
        assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid() != dead
    finally:
        lock.release()
