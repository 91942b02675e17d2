"""What every Tinker algorithm shares: the service session, bounded waits, checkpoints, final/. The step count, each
step's rows and its learning rate come from fai_rl.schedule, as on the local backend.

The service does the forward/backward passes and the optimizer; this process keeps the data, the sampling logic, the
rewards and the artefacts. Three rules make runs fast and safe:
  * submit, then wait: `forward_backward` and `optim_step` are both sent before either is awaited (the service works
    in clock cycles; waiting in between would cost a cycle per step);
  * every future is awaited with `tinker.request_timeout_s` (the SDK itself retries 5xx forever): a dead service is a
    clear error naming the last saved `tinker://` state, never a hang;
  * calls that are safe to repeat (sampling, saving) are retried `tinker.max_retries` times with backoff first.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fai_rl.artifacts import RunDir
from fai_rl.config.schema import Recipe
from fai_rl.errors import BackendError, RecipeError
from fai_rl.progress import RunStopped, stop_requested
from fai_rl.s3 import Uploads
from fai_rl.schedule import Schedule

CHECKPOINTS_FILE = "checkpoints.json"
API_KEY_ENV = "TINKER_API_KEY"
ROUNDS_DIR = "tinker_rounds"  # what a state needs beside it to resume exactly (save_round_file)


@dataclass
class TinkerResume:
    """Where a run continues: a tinker:// state (weights + optimizer) saved after `step` steps."""

    path: str
    step: int
    counters: dict = field(default_factory=dict)  # the loop's running totals at `step` (num_tokens, ...)


def check_api_key() -> None:
    """The key comes from TINKER_API_KEY only (never a recipe); the SDK wants it to start with tml-."""
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        raise BackendError(
            f"{API_KEY_ENV} is not set; export your Tinker API key (it is read from the environment only, never from "
            "a recipe or a file)."
        )
    if not key.startswith("tml-"):
        raise BackendError(f"{API_KEY_ENV} does not look like a Tinker API key (they start with 'tml-').")


def base_model(recipe: Recipe) -> str:
    """The name the service knows the base model by: model.base_model_name as written (e.g. Qwen/Qwen3-4B-Instruct-2507).

    The tokenizer is loaded here from the same name (a built-in fai-rl model from its local directory), so prompts
    are rendered with the template of the model the service trains.
    """
    return recipe.model.base_model_name


def find_tinker_resume(recipe: Recipe, resume: str | None) -> TinkerResume | None:
    """--resume: the last state in output_dir/checkpoints.json (or a given tinker:// path); else tinker.resume_from."""
    if resume is None:
        if recipe.tinker.resume_from:
            return TinkerResume(recipe.tinker.resume_from, 0)  # weights and optimizer only: the step count restarts
        return None
    if resume.startswith("tinker://"):
        state = next((c for c in read_checkpoints(recipe) if c["path"] == resume), {})
        return TinkerResume(resume, state.get("step", 0), state.get("counters", {}))
    if resume != "latest":
        raise RecipeError(f"--resume: '{resume}' is not a tinker:// state; on the Tinker backend pass --resume alone "
                          f"(the last state in {CHECKPOINTS_FILE}) or a tinker://<run>/weights/<name> path.")
    states = [c for c in read_checkpoints(recipe) if c["kind"] == "state"]
    if not states:
        raise RecipeError(
            f"--resume: no saved Tinker state in {Path(recipe.training.output_dir) / CHECKPOINTS_FILE}; run without "
            "--resume to start, or set tinker.resume_from to a tinker:// state."
        )
    return TinkerResume(states[-1]["path"], int(states[-1]["step"]), states[-1].get("counters", {}))


def init_state(init_from: str) -> str:
    """model.init_from as a tinker:// state: as given, or the last state in a Tinker run dir's checkpoints.json."""
    if init_from.startswith("tinker://"):
        return init_from
    file = Path(init_from) / CHECKPOINTS_FILE
    states = [c for c in json.loads(file.read_text())["checkpoints"] if c["kind"] == "state"] if file.exists() else []
    if not states:
        raise RecipeError(f"model.init_from: '{init_from}' is neither a tinker:// state nor a Tinker run's output_dir "
                          f"with a saved state in {CHECKPOINTS_FILE}; give one of those.")
    return states[-1]["path"]


def round_file(out: Path, kind: str, step: int) -> Path:
    return out / ROUNDS_DIR / f"{kind}-{step:06d}.json"


def save_round_file(out: Path, kind: str, step: int, data: dict) -> None:
    """Keep `data` (JSON) beside the state saved at `step`, as output_dir/tinker_rounds/<kind>-<step>.json: what a
    Tinker state (weights and optimizer) lacks to resume onto the uninterrupted run's path (issue 18), such as a
    round's batch (the RL driver) or what was sampled ahead of the state on older weights (tinker.max_steps_off_policy).
    Written before the state is recorded, staged and renamed: never half-written. The session deletes it when the state
    stops being a resume candidate (TinkerSession._prune_rounds) and at the end of a finished run."""
    file = round_file(out, kind, step)
    file.parent.mkdir(exist_ok=True)
    tmp = file.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, file)


def load_round_file(out: Path, kind: str, step: int, missing: tuple[str, str] | None) -> dict | None:
    """What save_round_file kept for the state at `step`; None when the run dir lacks it, with the note
    "resuming without <what> (<file> is missing): <what happens instead>" when `missing` gives those two."""
    file = round_file(out, kind, step)
    if not file.exists():
        if missing:
            print(f"note: resuming without {missing[0]} ({file} is missing): {missing[1]}", flush=True)
        return None
    return json.loads(file.read_text())


def resumable_steps(entries: list[dict], save_total_limit: int | None, ttl_s: int | None, now: float) -> set[int]:
    """The steps of the states in checkpoints.json `entries` that are still resume candidates at time `now`: not
    deleted on the service, among the newest `save_total_limit` (also when the service refused to delete the older
    ones: the limit is the user's bound on resume points) and saved less than `ttl_s` (tinker.checkpoint_ttl_s) ago."""
    states = [e for e in entries if e["kind"] == "state" and not e.get("deleted")]
    if save_total_limit:
        states = states[-save_total_limit:]
    if ttl_s:
        states = [e for e in states if time.mktime(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%S")) + ttl_s > now]
    return {e["step"] for e in states}


def read_checkpoints(recipe: Recipe) -> list[dict]:
    path = Path(recipe.training.output_dir) / CHECKPOINTS_FILE
    return json.loads(path.read_text())["checkpoints"] if path.exists() else []


class TinkerSession:
    """One training run on the service: the clients, bounded waits, checkpoints.json and final/."""

    def __init__(self, recipe: Recipe, run: RunDir, resume: TinkerResume | None, schedule: Schedule):
        import tinker

        self.recipe, self.run, self.k, self.schedule = recipe, run, recipe.tinker, schedule
        self.last_state: str | None = resume.path if resume else None
        self.counters: dict = dict(resume.counters) if resume else {}  # running totals, saved with each state
        self.service = tinker.ServiceClient(base_url=self.k.base_url)
        self.training = self._training_client(resume)
        self.tinker = tinker
        # s3: only final/ goes up (checkpoints are tinker:// states that stay on the service)
        self.uploads = Uploads(recipe, checkpoints=False, final=self.k.download_final)
        self._delete_refused = False  # training.save_total_limit: the service refused a delete once (noted once)

    def wait(self, future: Any, what: str) -> Any:
        """future.result() within request_timeout_s, or one clear error naming the last saved state."""
        try:
            return _result(future, self.k.request_timeout_s)
        except Exception as e:  # noqa: BLE001 - every SDK failure ends the run the same way
            raise self.failure(what, e) from None

    def retry(self, call: Callable[[], Any], what: str) -> Any:
        """Submit and wait, up to 1 + max_retries times with backoff, for calls that are safe to repeat."""
        for attempt in range(self.k.max_retries + 1):
            try:
                return _result(call(), self.k.request_timeout_s)
            except Exception as e:  # noqa: BLE001
                if attempt == self.k.max_retries:
                    raise self.failure(what, e) from None
                time.sleep(min(30.0, 2.0**attempt))
        raise AssertionError("unreachable")

    def failure(self, what: str, error: BaseException) -> BackendError:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within tinker.request_timeout_s={self.k.request_timeout_s:g} s"
        where = (f"the last saved state is {self.last_state}; continue with --resume (or tinker.resume_from="
                 f"{self.last_state})") if self.last_state else "no state was saved yet; start the run again"
        return BackendError(f"Tinker: {what} failed ({reason[:300]}); {where}.")

    # ---- clients

    def _training_client(self, resume: TinkerResume | None):
        k = self.k
        future = self.service.create_lora_training_client(
            base_model=base_model(self.recipe), rank=k.lora_rank, seed=self.recipe.training.seed,
            train_mlp=k.train_mlp, train_attn=k.train_attn, train_unembed=k.train_unembed,
        )
        client = self.wait(future, f"creating a LoRA training client for {base_model(self.recipe)!r}")
        if resume is not None:
            self.wait(client.load_state_with_optimizer(resume.path), f"loading state {resume.path}")
            print(f"tinker: resumed from {resume.path} (step {resume.step}), optimizer state included", flush=True)
        elif self.recipe.model.init_from:
            path = init_state(self.recipe.model.init_from)
            self.wait(client.load_state(path), f"loading model.init_from {path}")
            print(f"tinker: initialised from {path} (weights only, fresh optimizer)", flush=True)
        return client

    def init_reference(self, start: int):
        """The KL reference of a run with model.init_from: a sampler on the starting weights, saved once (before
        any update) and recorded in checkpoints.json, so a resumed run compares against the same start."""
        saved = [c["path"] for c in read_checkpoints(self.recipe) if c["kind"] == "reference"] if start else []
        path = saved[-1] if saved else self.retry(lambda: self.training.save_weights_for_sampler("reference"),
                                                  "saving the reference").path
        if not saved:
            self._record("reference", 0, path)
        return self.wait(self.service.create_sampling_client(model_path=path), "creating the reference sampler")

    def adam(self, step: int):
        """Adam for optimizer step `step` (from 0), at the local backend's learning rate for that step."""
        t = self.recipe.training
        return self.tinker.types.AdamParams(
            learning_rate=self.schedule.learning_rate(step), beta1=self.k.adam_beta1, beta2=self.k.adam_beta2,
            eps=self.k.adam_eps, weight_decay=t.weight_decay, grad_clip_norm=t.max_grad_norm,
        )

    def sampling_client(self, name: str):
        """A sampler on the current weights (the service saves them under `name`)."""
        return self.retry(lambda: self.training.save_weights_and_get_sampling_client(name),
                          f"saving sampler weights {name}")

    def save_state(self, step: int) -> str:
        """save_state (weights + optimizer), recorded in checkpoints.json; the path --resume continues from."""
        name = f"step-{step:06d}"
        saved = self.retry(lambda: self.training.save_state(name), f"save_state {name}")
        self.last_state = saved.path
        self._record("state", step, saved.path, dict(self.counters))
        return saved.path

    def stop_if_asked(self, step: int, total: int) -> None:
        """Called after every step: moves the live progress line, and on fai-rl-runs stop, SIGTERM or Ctrl-C
        (fai_rl.progress) saves the state at `step` (unless just saved) and ends the run with RunStopped; --resume
        continues from that state."""
        self.run.progress.tick(step, total)
        if step != total and stop_requested(self.run.path):
            saved = self.last_state if (self.last_state or "").endswith(f"step-{step:06d}") else self.save_state(step)
            raise RunStopped(step, saved)

    def _record(self, kind: str, step: int, path: str, counters: dict | None = None) -> None:
        file = self.run.path / CHECKPOINTS_FILE
        entries = json.loads(file.read_text())["checkpoints"] if file.exists() else []
        entries = [e for e in entries if e["step"] <= step or e["kind"] != kind]  # a resumed run rewrites the tail
        entries.append({"kind": kind, "step": step, "path": path, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        **({"counters": counters} if counters else {})})
        tmp = file.with_suffix(".json.partial")
        tmp.write_text(json.dumps({"base_model": self.recipe.model.base_model_name, "checkpoints": entries},
                                  indent=2) + "\n")
        os.replace(tmp, file)
        if self.k.checkpoint_ttl_s:  # states saved on the way may expire; what the run ends with never does
            ttl = None if step >= self.schedule.total else self.k.checkpoint_ttl_s  # None: no (or no more) expiry
            rest = self.service.create_rest_client()
            self.wait(rest.set_checkpoint_ttl_from_tinker_path(path, ttl), f"setting the TTL of {path}")
        if kind == "state" and self.recipe.training.save_total_limit:
            self._rotate([e for e in entries if e["kind"] == "state"])
        if kind == "state":
            self._prune_rounds(entries)

    def _prune_rounds(self, entries: list[dict]) -> None:
        """tinker_rounds/ (save_round_file) keeps the files of the states --resume can still continue from
        (resumable_steps); those of every other step go, of states a resumed run dropped included."""
        folder = self.run.path / ROUNDS_DIR
        if not folder.is_dir():
            return
        keep = {f"{step:06d}" for step in resumable_steps(entries, self.recipe.training.save_total_limit,
                                                            self.k.checkpoint_ttl_s, time.time())}
        for file in folder.iterdir():  # <kind>-<step>.json (and a .json.partial a kill left)
            if file.name.partition("-")[2].partition(".")[0] not in keep:
                file.unlink(missing_ok=True)

    def _rotate(self, states: list[dict]) -> None:
        """training.save_total_limit on Tinker: delete the oldest saved states on the service, keeping the newest N
        (the one --resume continues from is always the newest). The service may refuse (no delete endpoint, a
        permission): one note, the state stays until its TTL, training goes on."""
        limit = self.recipe.training.save_total_limit
        stale = [e for e in states[:-limit] if not e.get("deleted")]
        if not stale or self._delete_refused:
            return
        rest = self.service.create_rest_client()
        for entry in stale:
            try:
                _result(rest.delete_checkpoint_from_tinker_path(entry["path"]), self.k.request_timeout_s)
                entry["deleted"] = True
            except Exception as e:  # noqa: BLE001 - a refused delete never ends the run
                if not self._delete_refused:
                    reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
                    print(f"note: training.save_total_limit: the service did not delete {entry['path']} ({reason}); "
                          "older states stay there until their TTL (tinker.checkpoint_ttl_s).", flush=True)
                self._delete_refused = True
                break
        if not any(e.get("deleted") for e in stale):
            return
        file = self.run.path / CHECKPOINTS_FILE
        data = json.loads(file.read_text())
        gone = {e["path"] for e in stale if e.get("deleted")}
        data["checkpoints"] = [{**e, "deleted": True} if e["path"] in gone else e for e in data["checkpoints"]]
        tmp = file.with_suffix(".json.partial")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, file)

    def finish(self, step: int, tokenizer) -> Path | None:
        """The final state, sampler weights, and final/ (the adapter downloaded as a PEFT dir, when asked)."""
        if self.last_state is None or not self.last_state.endswith(f"step-{step:06d}"):
            self.save_state(step)
        # the final state has no steps left to resume into: nothing in tinker_rounds/ is needed any more
        shutil.rmtree(self.run.path / ROUNDS_DIR, ignore_errors=True)
        sampler = self.retry(lambda: self.training.save_weights_for_sampler("final"), "save_weights_for_sampler")
        self._record("sampler", step, sampler.path)
        print(f"tinker: final state {self.last_state}\ntinker: final sampler weights {sampler.path}", flush=True)
        if not self.k.download_final:
            return None
        from fai_rl.backends.tinker.adapter_download import download_adapter

        final = download_adapter(self, tokenizer, step)
        self.uploads.final(final)
        return final

    def close(self, ok: bool) -> None:
        """End the service session (frees its LoRA slot at once); best effort, bounded."""
        try:
            # a failed run is often a dead or unreachable service: do not make the user wait long for the goodbye
            _result(self.service.close("success" if ok else "errored"), min(30.0 if ok else 5.0, self.k.request_timeout_s))
        except Exception:  # noqa: BLE001 - the run's own outcome matters more than the goodbye
            pass


def _result(future: Any, timeout: float) -> Any:
    """Some SDK calls return a future, some (newer back-compat wrappers) the object itself."""
    return future.result(timeout=timeout) if hasattr(future, "result") else future


def datum(tinker, tokens: list[int], **per_target: list[float] | list[int]):
    """A Datum with the standard shift: input = tokens[:-1]; every loss input is aligned with tokens[1:]."""
    import torch

    inputs = {"target_tokens": tinker.TensorData.from_torch(torch.tensor(tokens[1:], dtype=torch.int64))}
    for name, values in per_target.items():
        if len(values) != len(tokens) - 1:
            raise ValueError(f"{name}: {len(values)} values for {len(tokens) - 1} targets")
        inputs[name] = tinker.TensorData.from_torch(torch.tensor(values, dtype=torch.float32))
    return tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def target_logprobs(output, index: int) -> list[float]:
    """Per-target log-probs of datum `index` from a forward/forward_backward output."""
    return output.loss_fn_outputs[index]["logprobs"].to_torch().tolist()


def write_summary(run: RunDir, recipe: Recipe, resume: TinkerResume | None, session: "TinkerSession", total: int,
                  runtime: float, final: Path | None, counted: str, count: int, **extra) -> dict:
    """summary.json of a Tinker run: what every algorithm reports, `counted` tokens and their rate, plus `extra`."""
    rate = counted.replace("tokens", "tokens_per_s") if counted != "train_tokens" else "tokens_per_s"
    # `count` is the whole run's when the loop keeps it in the session's counters (saved with each state); the rate
    # is this process's, over the tokens counted since the state it resumed from
    mine = count - (resume.counters.get(counted, 0) if resume else 0)
    return run.write_summary(
        algorithm=recipe.training.algorithm, backend="tinker", global_step=total,
        resumed_from_step=resume.step if resume else None, train_runtime_s=round(runtime, 2),
        **{counted: count, rate: round(mine / runtime, 1) if runtime else None}, **extra,
        final_dir=str(final) if final else None, tinker_state=session.last_state, **session.uploads.summary(),
    )


class StepLog:
    """Appends metrics.jsonl rows; RunDir.log_metrics prints the progress line, as on the local backend."""

    def __init__(self, run: RunDir, total: int, headline: tuple[str, ...]):
        self.run, self.total, self.headline = run, total, headline

    def __call__(self, step: int, metrics: dict) -> None:
        self.run.log_metrics(step, metrics, total=self.total)  # and the progress line (fai_rl.progress)
