"""A real Tinker-API server on loopback for the test suite.

skyrl-tx 0.3.0 (an open-source implementation of the Tinker API, JAX on CPU) serves one base model, here one of
fai-rl's built-in models (default `fai-rl/tiny-sft`), and our wire adapter (wire_adapter.py) sits in front of it so
that the current `tinker` SDK (0.38) can talk to it. Its engine runs as engine.py here: skyrl-tx's, with the fixes a
run needs to resume exactly (see that file). Clients use `base_url` (the adapter) and pass `base_model` as
`create_lora_training_client(base_model=...)`.

The server runs from its own virtualenv (tests/tinker_harness/install.sh), never from .venv: its pins differ.

    with TinkerServer() as server:                       # ~15 s until healthy on 2 cores
        sc = server.service_client()                     # tinker.ServiceClient(base_url=server.base_url, ...)
        tc = sc.create_lora_training_client(base_model=server.base_model, rank=8).result(timeout=120)
        ...
        server.kill()                                    # SIGKILL the server (fault tests); the adapter stays up

Both processes run in their own session (process group); stop() sends SIGTERM to both groups, then SIGKILL to
whatever is left. Ports are picked free at start, so pytest-xdist workers can each run their own server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_VENV = ROOT / ".tinker-server" / "venv"
INSTALL_COMMAND = "tests/tinker_harness/install.sh"
ENGINE_READY = "Starting background engine..."  # what skyrl-tx's engine logs once the base model is loaded
API_KEY = "tml-local-test"  # the SDK insists on the tml- prefix; the local server checks nothing


# Runs beside the server: once the process that started it is gone (a test run killed with SIGKILL, where no
# finalizer runs), it takes the server's and the adapter's process groups down too, so no orphan keeps ~2 GB.
_WATCHDOG = """
import os, signal, sys, time
parent, groups = int(sys.argv[1]), [int(g) for g in sys.argv[2:]]
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
while os.getppid() == parent and any(alive(g) for g in groups):
    time.sleep(1)
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in groups:
        try:
            os.killpg(g, sig)
        except OSError:
            pass
    time.sleep(3)
"""


class ServerNotInstalled(RuntimeError):
    pass


class ServerStartError(RuntimeError):
    pass


def server_python(venv: str | os.PathLike | None = None) -> Path:
    """The python of the server's venv ($FAI_RL_TINKER_SERVER_VENV, else <repo>/.tinker-server/venv).

    Raises ServerNotInstalled, naming the install command, if it is missing or incomplete.
    """
    venv = Path(venv or os.environ.get("FAI_RL_TINKER_SERVER_VENV") or DEFAULT_VENV)
    python = venv / "bin" / "python"
    if not (python.is_file() and (venv / ".fai-rl-tinker-server").is_file()):
        cmd = INSTALL_COMMAND if venv == DEFAULT_VENV else f"{INSTALL_COMMAND} {venv}"
        raise ServerNotInstalled(
            f"the local Tinker-API server is not installed in {venv}; install it with `{cmd}` "
            "(~2.5 min, once; `make test` does it for you)"
        )
    return python


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v1/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class TinkerServer:
    """skyrl-tx Tinker-API server + wire adapter on 127.0.0.1, serving one fai-rl built-in model.

    Attributes (valid after start()):
      base_url     the adapter's URL: give it to tinker.ServiceClient(base_url=..., api_key=server.api_key)
      base_model   the exact string for create_lora_training_client(base_model=...): for a built-in model its own
                   name ("fai-rl/tiny-sft"); with serve_as="path" or a non-built-in model, model_dir as a str
      model_dir    the (converted, see _prepare_model) HF model dir the server loads; AutoTokenizer and
                   AutoModelForCausalLM.from_pretrained work on it in .venv too
      server_url   skyrl-tx itself, behind the adapter (JSON API only; tests should use base_url)
      workdir, checkpoints_dir, db_path, server_log, adapter_log
    """

    def __init__(
        self,
        model: str = "fai-rl/tiny-sft",
        *,
        venv: str | os.PathLike | None = None,
        workdir: str | os.PathLike | None = None,
        max_lora_adapters: int = 8,
        max_lora_rank: int = 8,
        startup_timeout: float = 180.0,
        extra_backend_config: dict | None = None,
        serve_as: str = "name",
        session_timeout_sec: int = 60,
    ):
        if serve_as not in ("name", "path"):
            raise ValueError("serve_as must be 'name' or 'path'")
        self.model = model
        self.serve_as = serve_as
        self.python = server_python(venv)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tinker-server-"))
        # Speed on 2 CPU cores (measured, 64 x 32-token batches, tiny-sft): skyrl-tx's LoRA cost grows with the
        # adapter slots it holds, so 8 slots (7 models at once; a closed session frees its slot) rather than its 32:
        # forward_backward 7.4-9.7 s -> 1.0 s, a 64-sequence sample 2.7 s -> 0.4 s. And JAX compiles anew for every
        # batch size it meets (8-25 s each here): sampling is padded to 64 sequences and training split into micro
        # batches of 16, so a run meets a few shapes, not one per batch size (a Tinker GRPO step 9-15 s -> ~4 s).
        self.backend_config = {"max_lora_adapters": max_lora_adapters, "max_lora_rank": max_lora_rank,
                               "sample_max_num_sequences": 64, "train_micro_batch_size": 16,
                               **(extra_backend_config or {})}
        self.startup_timeout = startup_timeout
        # A session whose client sent no heartbeat (the SDK sends one every 10 s) for this long is dropped and its
        # LoRA slots freed: 60 s rather than skyrl-tx's 300 s, for test runs whose client processes die or are killed.
        self.session_timeout_sec = session_timeout_sec
        self.api_key = API_KEY
        self.checkpoints_dir = self.workdir / "checkpoints"
        self.db_path = self.workdir / "tinker.db"
        self.server_log = self.workdir / "server.log"
        self.adapter_log = self.workdir / "adapter.log"
        self.model_dir: Path | None = None
        self.base_model: str | None = None
        self.server_url: str | None = None
        self.base_url: str | None = None
        self._server: subprocess.Popen | None = None
        self._adapter: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "TinkerServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TinkerServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_dir, self.base_model = self._prepare_model()
        last_error = None
        for _ in range(3):  # a port picked free can be taken by someone else before we bind it: try again
            try:
                self._start_once()
                return self
            except ServerStartError as e:
                last_error = e
                self.stop(remove_workdir=False)
                if "address already in use" not in self._logs_tail().lower():
                    break
        raise last_error

    def _prepare_model(self) -> tuple[Path, str]:
        """A copy of the model dir that skyrl-tx can load, and the name the server is to know it by.

        fai-rl's built-in models are saved by transformers 5, whose config.json keeps RoPE settings only under
        `rope_parameters`; skyrl-tx 0.3.0 (transformers 4.57) reads `config.rope_theta` and fails every request
        with "'ModelConfig' object has no attribute 'rope_theta'". The copy gets `rope_theta` (and `rope_scaling`
        for non-default RoPE) at the top level; weights and tokenizer files are copied unchanged.

        A built-in model is served under its own name (`fai-rl/tiny-sft`): the copy sits at
        <workdir>/fai-rl/tiny-sft and the server runs in <workdir>, where skyrl-tx resolves the name as a local dir
        (a name that is no local dir would be looked up on the Hub). Clients then pass the name a recipe uses. With
        serve_as="path" (or any other local model dir) the server gets the copy's absolute path instead.
        """
        from fai_rl.models.builtin import is_builtin_model, materialize_builtin_model

        builtin = is_builtin_model(self.model)
        source = Path(materialize_builtin_model(self.model)) if builtin else Path(self.model).expanduser()
        if not (source / "config.json").is_file():
            raise ServerStartError(f"{self.model!r} is neither a fai-rl built-in model nor a local HF model dir")
        by_name = builtin and self.serve_as == "name"
        dest = self.workdir / (self.model if by_name else f"models/{source.name}")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, dest, symlinks=False)
        config = json.loads((dest / "config.json").read_text())
        rope = config.get("rope_parameters") or {}
        if "rope_theta" not in config and "rope_theta" in rope:
            config["rope_theta"] = rope["rope_theta"]
            if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
                config["rope_scaling"] = rope
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return dest.resolve(), (self.model if by_name else str(dest.resolve()))

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "VIRTUAL_ENV", "PYTHON"))}
        env.update(
            JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TINKER_TELEMETRY="0",
            PATH=f"{HERE}{os.pathsep}{env.get('PATH', '')}", SKYRL_PY=str(self.python), PYTHONUNBUFFERED="1",
            COLUMNS="200",  # skyrl-tx logs through rich, which wraps at 80 columns without a terminal
            JAX_COMPILATION_CACHE_DIR=os.environ.get("FAI_RL_TINKER_JAX_CACHE", str(DEFAULT_VENV.parent / "jax-cache")),
        )
        return env

    def _start_once(self) -> None:
        server_port, adapter_port = _free_port(), _free_port()
        while adapter_port == server_port:
            adapter_port = _free_port()
        self.server_url = f"http://127.0.0.1:{server_port}"
        self.base_url = f"http://127.0.0.1:{adapter_port}"
        env = self._env()
        server_cmd = [
            str(self.python), "-m", "tx.tinker.api", "--base-model", self.base_model,
            "--host", "127.0.0.1", "--port", str(server_port),
            "--backend-config", json.dumps(self.backend_config),
            "--checkpoints-base", str(self.checkpoints_dir), "--database-url", f"sqlite:///{self.db_path}",
            "--session-timeout-sec", str(self.session_timeout_sec), "--session-cleanup-interval-sec", "10",
        ]
        adapter_cmd = [str(self.python), str(HERE / "wire_adapter.py"), self.server_url, str(adapter_port),
                       self.base_model, str(self.workdir / "exports")]
        with open(self.server_log, "ab") as log:
            self._server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.workdir, start_new_session=True, stdin=subprocess.DEVNULL)
        with open(self.adapter_log, "ab") as log:
            self._adapter = subprocess.Popen(adapter_cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             cwd=self.workdir, start_new_session=True, stdin=subprocess.DEVNULL)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self._server.pid), str(self._adapter.pid)],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait_healthy(self.startup_timeout)

    def wait_healthy(self, timeout: float) -> None:
        """Wait until server and adapter both answer /api/v1/healthz; ServerStartError (with log tails) if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in (("server", self._server), ("adapter", self._adapter)):
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise ServerStartError(f"the Tinker-API {name} exited (code {code}) during start-up\n"
                                           + self._logs_tail())
            # The API answers within ~5 s; the engine (a child of the API process) loads the model ~10-15 s later
            # and logs ENGINE_READY. Waiting for it puts model-loading failures here, not in the first test.
            if self._engine_ready() and _healthy(self.server_url) and _healthy(self.base_url):
                return
            time.sleep(0.2)
        raise ServerStartError(f"the Tinker-API server was not healthy within {timeout:.0f} s\n" + self._logs_tail())

    def _engine_ready(self) -> bool:
        try:
            return ENGINE_READY in self.server_log.read_text(errors="replace")
        except OSError:
            return False

    def _logs_tail(self, n: int = 30) -> str:
        out = []
        for path in (self.server_log, self.adapter_log):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {path} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(out)

    @staticmethod
    def _signal_group(proc: subprocess.Popen | None, sig: int) -> None:
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _group_alive(proc: subprocess.Popen | None) -> bool:
        if proc is None:
            return False
        proc.poll()  # reap the leader if it is gone
        try:
            os.killpg(proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, *, timeout: float = 10.0, remove_workdir: bool | None = None) -> None:
        """SIGTERM both process groups, SIGKILL what is left after `timeout` s; remove our own temp workdir."""
        procs = [p for p in (self._server, self._adapter) if p is not None]
        for p in procs:
            self._signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(self._group_alive(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            self._signal_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        self._server = self._adapter = self._watchdog = None
        if remove_workdir is None:
            remove_workdir = self._own_workdir and not os.environ.get("FAI_RL_KEEP_TINKER_SERVER_DIR")
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self, *, adapter: bool = False) -> None:
        """SIGKILL the server's whole process group (API + engine) at once, as a crash would; the adapter stays up
        (it answers 502 from then on) unless `adapter` is True, in which case nothing listens on base_url any more.
        """
        self._signal_group(self._server, signal.SIGKILL)
        if self._server is not None:
            self._server.wait(timeout=10)
        if adapter:
            self._signal_group(self._adapter, signal.SIGKILL)
            if self._adapter is not None:
                self._adapter.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self._server is not None and self._server.poll() is None

    # ------------------------------------------------------------------ clients
    def service_client(self, **kwargs):
        """A tinker.ServiceClient for this server (the SDK must be importable in the calling interpreter)."""
        import tinker

        return tinker.ServiceClient(base_url=self.base_url, api_key=self.api_key, **kwargs)

    def rest_client(self):
        """A tinker.RestClient for this server (checkpoint listing, weight export URLs)."""
        import tinker

        return tinker.RestClient(base_url=self.base_url, api_key=self.api_key)


def main() -> None:
    """Run a server in the foreground until Ctrl-C: .venv/bin/python tests/tinker_harness/server.py [MODEL]"""
    with TinkerServer(sys.argv[1] if len(sys.argv) > 1 else "fai-rl/tiny-sft") as server:
        print(f"TINKER_BASE_URL={server.base_url}\nbase_model={server.base_model}\nlogs: {server.workdir}",
              flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
