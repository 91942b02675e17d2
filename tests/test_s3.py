"""S3 end to end (fai_rl/s3/) against a real S3-compatible server on 127.0.0.1: moto's ThreadedMotoServer, never a
mock. Checkpoints and final/ go up while tiny runs train; --resume fetches them back; datasets and model dirs are read
from s3://; a dead endpoint or a missing bucket costs nothing but a reported upload; credentials never leak.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, tiny_recipe

from fai_rl import s3
from fai_rl.cli.train import main
from fai_rl.config import load_recipe
from fai_rl.config.schema import DatasetSpec
from fai_rl.errors import DataError, RecipeError

pytest.importorskip("moto.server", reason="pip install 'fai-rl[dev]' (moto[server])")
pytestmark = pytest.mark.slow

SECRET = f"fai-rl-test-secret-{uuid.uuid4().hex}"  # grepped for in everything a run writes or prints
ACCESS_KEY = f"FAIRLTESTKEY{uuid.uuid4().hex[:8].upper()}"


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server on a free loopback port, with fake credentials in the environment for this module only."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(endpoint):
    """A fresh bucket; its download cache under $FAI_RL_HOME/s3 is removed afterwards."""
    name = f"fai-rl-{uuid.uuid4().hex[:12]}"
    s3.client(None, endpoint).create_bucket(Bucket=name)
    yield name
    shutil.rmtree(s3.cache_root() / name, ignore_errors=True)


def stored(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """key -> size of every object under prefix, straight from the server."""
    pages = s3.client(None, endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def local_sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def recipe_with_s3(out: Path, bucket: str, endpoint: str, **s3_keys) -> dict:
    recipe = tiny_recipe(out, s3={"enabled": True, "bucket": bucket, "prefix": "runs/tiny", "endpoint_url": endpoint,
                                  "uploader": "boto3", **s3_keys})
    recipe["data"]["eval_datasets"] = []  # evaluation is not what these tests are about
    recipe["training"].update({"max_steps": 4, "save_steps": 2, "logging_steps": 1})
    return recipe


def test_checkpoints_and_final_go_up_and_final_loads_back(write_recipe, tmp_path, bucket, endpoint, capsys):
    out = tmp_path / "run"
    assert main(["--recipe", str(write_recipe(recipe_with_s3(out, bucket, endpoint)))]) == 0
    printed = capsys.readouterr()
    assert f"s3: uploading checkpoints and final/ to s3://{bucket}/runs/tiny/ with boto3" in printed.out
    on_store = stored(endpoint, bucket)
    for name in ("checkpoint-2", "checkpoint-4", "final"):
        files = local_sizes(out / name)
        assert "trainer_state.json" in files or name == "final"
        assert {f"runs/tiny/{name}/{rel}": size for rel, size in files.items()}.items() <= on_store.items(), name
        assert f"runs/tiny/{name}/{s3.SENTINEL}" in on_store, name  # the marker of a complete upload, written last
    assert json.loads((out / "summary.json").read_text())["s3_failed_uploads"] == []
    assert not (out / ".s3-uploading").exists()  # the hard-link snapshots are gone
    # final/ downloaded back from the store is a model dir transformers loads
    from transformers import AutoModelForCausalLM, AutoTokenizer

    back = s3.download_dir(f"s3://{bucket}/runs/tiny/final", None, endpoint, dest=tmp_path / "back")
    model = AutoModelForCausalLM.from_pretrained(back)
    assert model.num_parameters() > 0 and AutoTokenizer.from_pretrained(back).eos_token
    # (f) the credentials are in no file of the run and in nothing it printed
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert SECRET.encode() not in data and ACCESS_KEY.encode() not in data, path
    assert SECRET not in printed.out + printed.err and ACCESS_KEY not in printed.out + printed.err


def test_delete_local_after_upload_then_resume_fetches_the_newest_checkpoint(write_recipe, tmp_path, bucket,
                                                                               endpoint, capsys):
    out = tmp_path / "run"
    path = write_recipe(recipe_with_s3(out, bucket, endpoint, delete_local_after_upload=True))
    assert main(["--recipe", str(path)]) == 0
    printed = capsys.readouterr().out
    assert not list(out.glob("checkpoint-*"))  # deleted, each only after its verified upload
    assert "s3: uploaded checkpoint-4 (" in printed and "; deleted the local checkpoint-4" in printed
    assert printed.index("s3: uploaded checkpoint-2") < printed.index("s3: uploaded final")
    on_store = stored(endpoint, bucket, "runs/tiny/checkpoint-")
    assert {"runs/tiny/checkpoint-2/trainer_state.json", "runs/tiny/checkpoint-4/optimizer.pt"} <= set(on_store)
    assert (out / "final" / "model.safetensors").exists()  # final/ is never deleted

    # uploads cut short by a kill: checkpoint-8 got trainer_state.json but no completion marker; checkpoint-6 a
    # marker whose manifest lists a file the store lacks. --resume passes over both for checkpoint-4.
    store = s3.store.client(None, endpoint)
    state = store.get_object(Bucket=bucket, Key="runs/tiny/checkpoint-4/trainer_state.json")["Body"].read()
    for n in (6, 8):
        store.put_object(Bucket=bucket, Key=f"runs/tiny/checkpoint-{n}/trainer_state.json", Body=state)
    store.put_object(Bucket=bucket, Key="runs/tiny/checkpoint-6/.fai_rl_s3_complete",
                     Body=json.dumps({"trainer_state.json": len(state), "model.safetensors": 1}).encode())
    assert main(["--recipe", str(path), "--resume", "training.max_steps=6"]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint-4 on the store is newer than any complete local checkpoint" in printed
    assert all(f"runs/tiny/checkpoint-{n}/ on the store is incomplete" in printed for n in (6, 8)), printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["global_step"] == 6 and summary["s3_failed_uploads"] == []
    steps = [row["step"] for row in (json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in row]
    assert steps == [1, 2, 3, 4, 5, 6]  # the first run's rows, then the resumed run's, nothing twice
    state = json.loads(s3.download_file(f"s3://{bucket}/runs/tiny/checkpoint-6/trainer_state.json", None,
                                        endpoint).read_text())
    assert state["global_step"] == 6

    # --resume s3://.../checkpoint-N names one checkpoint: it lands in output_dir/checkpoint-N
    other = load_recipe(path, [f"training.output_dir={tmp_path / 'other'}"])
    fetched = s3.fetch_resume_checkpoint(other, f"s3://{bucket}/runs/tiny/checkpoint-2")
    assert fetched == str(tmp_path / "other" / "checkpoint-2")
    assert json.loads((Path(fetched) / "trainer_state.json").read_text())["global_step"] == 2
    with pytest.raises(RecipeError, match="is not a checkpoint-N prefix"):
        s3.fetch_resume_checkpoint(other, f"s3://{bucket}/runs/tiny/final")


def test_ppo_checkpoints_go_up_and_resume_comes_back_from_the_store(write_recipe, tmp_path, bucket, endpoint):
    out = tmp_path / "ppo"
    recipe = {
        "model": {"base_model_name": "fai-rl/tiny"},
        "data": {"datasets": [{"name": "fai-rl/arithmetic", "max_samples": 64}]},
        "training": {"algorithm": "ppo", "output_dir": str(out), "max_steps": 2, "save_steps": 2, "logging_steps": 1,
                     "per_device_train_batch_size": 4, "max_completion_length": 4, "num_ppo_epochs": 1,
                     "bf16": False},
        "rewards": [{"function": "exact_match"}],
        "s3": {"enabled": True, "bucket": bucket, "prefix": "ppo", "endpoint_url": endpoint,
               "delete_local_after_upload": True},
    }
    path = write_recipe(recipe)
    assert main(["--recipe", str(path)]) == 0
    assert not (out / "checkpoint-2").exists()
    on_store = stored(endpoint, bucket, "ppo/")
    assert {"ppo/checkpoint-2/value_head.pt", "ppo/checkpoint-2/trainer_state.json",
            "ppo/final/model.safetensors"} <= set(on_store)
    assert main(["--recipe", str(path), "--resume", "training.max_steps=3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 3 and summary["s3_failed_uploads"] == []


def test_an_upload_cut_short_is_refused_by_its_manifest(tmp_path, bucket, endpoint):
    src = tmp_path / "final"
    src.mkdir()
    for name, size in (("config.json", 10), ("model.safetensors", 4000), ("tokenizer.json", 300)):
        (src / name).write_bytes(b"x" * size)
    assert s3.upload_dir(src, bucket, "runs/a/final", endpoint_url=endpoint) == 3
    client = s3.client(None, endpoint)
    client.delete_object(Bucket=bucket, Key="runs/a/final/model.safetensors")  # as if killed mid-upload
    with pytest.raises(s3.BackendError, match=r"runs/a/final/ is incomplete: 1 of its 3 .*model.safetensors"):
        s3.download_dir(f"s3://{bucket}/runs/a/final", None, endpoint, dest=tmp_path / "back")
    assert not (tmp_path / "back").exists()
    client.delete_object(Bucket=bucket, Key=f"runs/a/final/{s3.SENTINEL}")  # no marker: another tool's upload
    assert sorted(p.name for p in s3.download_dir(f"s3://{bucket}/runs/a/final", None, endpoint,
                                                  dest=tmp_path / "back").iterdir()) == [
        s3.SENTINEL, "config.json", "tokenizer.json"]


def test_dataset_and_model_read_from_s3(write_recipe, tmp_path, bucket, endpoint, capsys):
    from fai_rl.data.sources import load_source
    from fai_rl.data.tasks import load_builtin_task
    from fai_rl.models.load import resolve_model_path

    client = s3.client(None, endpoint)
    tiny = Path(resolve_model_path("fai-rl/tiny"))
    for f in tiny.iterdir():
        client.upload_file(str(f), bucket, f"models/tiny/{f.name}")
    rows = load_builtin_task("fai-rl/arithmetic", "train")[:64]
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "run"
    recipe = tiny_recipe(out, model={"base_model_name": f"s3://{bucket}/models/tiny", "s3_endpoint_url": endpoint})
    recipe["data"]["datasets"] = [{"name": f"s3://{bucket}/data/train.jsonl", "s3_endpoint_url": endpoint}]
    recipe["data"]["eval_datasets"] = []
    recipe["training"].update({"max_steps": 2, "save_steps": 100})
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    assert f"s3: downloading s3://{bucket}/models/tiny/" in capsys.readouterr().out
    note = json.loads((out / "final" / "fai_rl.json").read_text())
    assert note["base_model_name"] == f"s3://{bucket}/models/tiny" and note["kind"] == "full_model"

    # a bad row is named by its s3:// URI and line, not by the downloaded copy
    client.put_object(Bucket=bucket, Key="data/bad.jsonl", Body='{"prompt": "a", "answer": "1"}\n\n{"prompt": \n')
    with pytest.raises(DataError, match=f"s3://{bucket}/data/bad.jsonl:3: not valid JSON"):
        load_source(DatasetSpec(name=f"s3://{bucket}/data/bad.jsonl", s3_endpoint_url=endpoint), "data.datasets[0]")
    with pytest.raises(DataError, match=r"data.datasets\[0\].name: .*\.txt' is not a .jsonl"):
        load_source(DatasetSpec(name=f"s3://{bucket}/data/notes.txt", s3_endpoint_url=endpoint), "data.datasets[0]")
    # a changed object (new ETag) is fetched again; an unchanged one comes from the cache
    uri = f"s3://{bucket}/data/bad.jsonl"
    first = s3.download_file(uri, None, endpoint)
    assert s3.download_file(uri, None, endpoint) == first
    client.put_object(Bucket=bucket, Key="data/bad.jsonl", Body='{"prompt": "b", "answer": "2"}\n')
    assert s3.download_file(uri, None, endpoint).read_text() == '{"prompt": "b", "answer": "2"}\n'


def test_other_local_ranks_wait_for_rank_0s_download(tmp_path, bucket, endpoint, monkeypatch):
    s3.client(None, endpoint).put_object(Bucket=bucket, Key="m/config.json", Body="{}")
    uri, dest = f"s3://{bucket}/m", tmp_path / "m"
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(s3.BackendError, match="waited 0.2 s for local rank 0"):
        s3.download_dir(uri, None, endpoint, dest=dest, timeout_s=0.2)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert (s3.download_dir(uri, None, endpoint, dest=dest) / s3.SENTINEL).exists()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert s3.download_dir(uri, None, endpoint, dest=dest, timeout_s=0.2) == dest  # the sentinel is there now


def test_a_failed_upload_is_reported_and_the_data_stays_local(write_recipe, tmp_path, bucket, endpoint, capsys,
                                                               monkeypatch):
    monkeypatch.setattr("fai_rl.s3.upload.BACKOFF_S", 0.05)  # upload_dir reads it there
    with socket.socket() as probe:  # a port nothing listens on: a stopped endpoint
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "run"
    recipe = recipe_with_s3(out, bucket, dead, max_retries=2, delete_local_after_upload=True)
    assert main(["--recipe", str(write_recipe(recipe))]) == 0
    printed = capsys.readouterr().out
    for name in ("checkpoint-2", "checkpoint-4", "final"):
        local = out / name
        assert (local / "model.safetensors").exists(), name  # kept, even with delete_local_after_upload
        assert (f"s3: upload of {local} failed after 3 attempts (EndpointConnectionError: Could not connect to the "
                f"endpoint URL") in printed and f"); the data stays at {local}\n" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["s3_failed_uploads"] == [str(out / n) for n in ("checkpoint-2", "checkpoint-4", "final")]
    assert SECRET not in printed

    # a missing bucket on a live server: the same report, the snapshot of a rotated checkpoint put back in place
    ckpt = tmp_path / "gone" / "checkpoint-7"
    shutil.copytree(out / "checkpoint-2", ckpt)
    missing = load_recipe(write_recipe(recipe_with_s3(tmp_path / "gone", "no-such-bucket-here", endpoint,
                                                      max_retries=1), "missing.yaml"), [])
    uploads = s3.Uploads(missing)
    uploads.checkpoint(ckpt)
    shutil.rmtree(ckpt)  # save_total_limit rotates it away while the upload is still being tried
    uploads.final(None)
    assert uploads.summary() == {"s3_failed_uploads": [str(ckpt)]}
    assert (ckpt / "trainer_state.json").exists()  # nothing lost: the snapshot became the checkpoint again
    assert "failed after 2 attempts (S3UploadFailedError:" in capsys.readouterr().out


def test_recipe_errors_name_the_key(write_recipe, tmp_path, bucket, endpoint, capsys, monkeypatch):
    recipe = recipe_with_s3(tmp_path / "run", bucket, endpoint, uploader="s5cmd")
    recipe["data"]["datasets"] = [{"name": "s3://bucket-only"}, {"name": f"s3://{bucket}/data/x.txt"}]
    if shutil.which("s5cmd"):
        monkeypatch.setenv("PATH", "/nonexistent")  # this check is about a machine without it
    assert main(["--recipe", str(write_recipe(recipe)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "s3.uploader: 's5cmd' but the s5cmd binary is not on PATH" in err
    assert "data.datasets[0].name: 's3://bucket-only' is not an s3://bucket/key URI" in err
    assert "data.datasets[1].name:" in err and "is a .txt object" in err
    assert not (tmp_path / "run").exists()


def test_deleting_uploaded_checkpoints_beside_load_best_model_at_end_is_refused(write_recipe, tmp_path, bucket,
                                                                                 endpoint, capsys):
    recipe = recipe_with_s3(tmp_path / "run", bucket, endpoint, delete_local_after_upload=True)
    recipe["training"].update({"load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                               "eval_steps": 2, "save_steps": 2})
    assert main(["--recipe", str(write_recipe(recipe)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "s3.delete_local_after_upload: true together with training.load_best_model_at_end" in err, err


@pytest.mark.tinker
def test_tinker_uploads_only_final(tmp_path, bucket, endpoint, tinker_server, monkeypatch, capsys):
    monkeypatch.setenv("TINKER_API_KEY", tinker_server.api_key)
    out = tmp_path / "tinker"
    overrides = [
        "training.backend=tinker", f"tinker.base_url={tinker_server.base_url}", "tinker.lora_rank=8",
        "model.base_model_name=fai-rl/tiny-sft", f"training.output_dir={out}", "training.max_steps=2",
        "training.eval_steps=null", "training.save_total_limit=null", "data.eval_datasets=[]",
        "s3.enabled=true", f"s3.bucket={bucket}", "s3.prefix=tk", f"s3.endpoint_url={endpoint}", "s3.uploader=boto3",
    ]
    assert main(["--recipe", str(ROOT / "recipes/quickstart/sft.yaml"), *overrides]) == 0
    assert f"s3: uploading final/ to s3://{bucket}/tk/ with boto3" in capsys.readouterr().out
    on_store = stored(endpoint, bucket)
    assert {f"tk/final/{rel}": size for rel, size in local_sizes(out / "final").items()}.items() <= on_store.items()
    assert not any(k.startswith("tk/checkpoint-") for k in on_store)  # Tinker states stay on the service
    assert json.loads((out / "summary.json").read_text())["s3_failed_uploads"] == []


def test_two_processes_upload_checkpoints_holding_every_ranks_files(write_recipe, tmp_path, bucket, endpoint):
    """Under --num-processes 2 each process writes its own files into checkpoint-N (rng_state_<rank>.pth, GRPO's
    trl_tokens-rank<rank>.json written by fai-rl's own on_save) and only the main one uploads: every checkpoint on
    the store holds both ranks' files, the upload having waited for both. (The race is not forced here: without
    the wait, rank 0's snapshot could be taken before rank 1's on_save wrote its file.)"""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    recipe = {"model": {"base_model_name": "fai-rl/tiny-sft"},
              "data": {"datasets": [{"name": "fai-rl/digits", "split": "train", "max_samples": 16}]},
              "rewards": [{"function": "exact_match"}],
              "training": {"algorithm": "grpo", "output_dir": str(out), "max_steps": 2, "save_steps": 1,
                           "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 4,
                           "logging_steps": 1, "bf16": False},
              "s3": {"enabled": True, "bucket": bucket, "prefix": "runs/tiny", "endpoint_url": endpoint,
                     "uploader": "boto3"}}
    proc = subprocess.run([sys.executable, "-m", "fai_rl.cli.train", "--recipe", str(write_recipe(recipe)),
                           "--num-gpus", "0", "--num-processes", "2"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    on_store = stored(endpoint, bucket)
    for step in (1, 2):
        for rank in (0, 1):
            for name in (f"rng_state_{rank}.pth", f"trl_tokens-rank{rank}.json"):
                assert f"runs/tiny/checkpoint-{step}/{name}" in on_store, (name, sorted(on_store))
        assert f"runs/tiny/checkpoint-{step}/{s3.SENTINEL}" in on_store
