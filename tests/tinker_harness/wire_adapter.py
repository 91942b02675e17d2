"""fai-rl's wire adapter between the current `tinker` SDK (0.38) and a skyrl-tx 0.3.0 Tinker-API server.

    tinker SDK 0.38  -->  this adapter (127.0.0.1:PORT)  -->  skyrl-tx 0.3.0 server (JSON only)

skyrl-tx implements the Tinker API as it was before the SDK moved parts of it to protobuf and added a few routes.
This adapter papers over exactly these differences and passes everything else through unchanged:

* `POST /api/v1/client/config`: answered with `{}` when the server has no such route (it 404s).
* `POST /api/v1/forward_backward` sent as protobuf (optionally zstd-compressed): decoded with the SDK's own
  `tinker.proto.tinker_public_pb2` and re-sent as JSON, to `/api/v1/forward` when `forward_only` is set.
* `POST /api/v1/retrieve_future` asked for with `Accept: application/x-protobuf`: the server's JSON result is
  re-encoded as a protobuf `ForwardBackwardOutput` or `SampleResponse`. `loss:sum` is added to the metrics when the
  server reports none (the hosted service always does; the SDK's `forward_backward_custom` needs it), and
  `prompt_logprobs` are padded to one entry per prompt token, the first one None (NaN), as the hosted service does.
* `save_weights_for_sampler` results: skyrl-tx's `tinker://<run>/<name>` becomes the hosted form
  `tinker://<run>/sampler_weights/<name>` (skyrl-tx accepts both, and lists its checkpoints in the long form).
* `POST /api/v1/asample`: the future gets the `sample_sequence_ids` the SDK (>= 0.36) asserts on.
* `GET /api/v1/samplers/{id}`: faked from the base model when the server has no such route.
* `POST /api/v1/sessions/{id}/finish` (`ServiceClient.close()`), which the server lacks: the session's models are
  unloaded through `/api/v1/unload_model`, so their LoRA slots (at most `max_lora_adapters`) are free at once.
* Weight export, the SDK 0.38 way (`TrainingClient.save_weights_external(name)`, then
  `RestClient.get_external_weights_urls(path)`, then a plain HTTP GET per file): skyrl-tx has neither route, so
  `POST /api/v1/save_weights_external` becomes a `save_weights_for_sampler` under the name `external-<name>` and
  its result path is rewritten to `tinker://<run>/external_weights/<name>`; the URLs route fetches the server's
  sampler archive (a tar.gz of a PEFT adapter: `adapter_model.safetensors` + `adapter_config.json`), unpacks it
  into FILES_DIR (else a temp dir) and returns one `http://127.0.0.1:PORT/_files/...` URL per file. The files are
  the server's, unchanged (the hosted service's export of a LoRA run may differ in detail); the export also shows
  up in list_checkpoints as the sampler checkpoint `external-<name>`.
* `PUT /api/v1/training_runs/{run}/checkpoints/{id}/ttl` (`RestClient.set_checkpoint_ttl_from_tinker_path`, what
  `tinker.checkpoint_ttl_s` calls), which the server lacks: checked as the hosted service does (null removes the
  TTL, else 3600 s to 10 years) and recorded here, nothing expires; `GET /_ttls` lists the record
  ({"<run>/<id>": seconds or null, in the order set}) for tests.
* Redirects from the server (`GET .../checkpoints/{id}/archive` answers 302 to `.../download`) are relayed with
  their Location rewritten to the adapter's address.
* An unreachable server (killed, not started yet) answers 502, as a gateway would, instead of a bare 500 traceback,
  and only after a 1 s pause: the SDK retries 5xx answers to retrieve_future at once, with no backoff and no end
  (short of its 2 h "no progress" timeout), and would otherwise spin flat out until the caller's
  `.result(timeout=...)` gives up (the SDK's own retries then still go on in its background thread).

* Loss semantics. The hosted service sums each loss over tokens and datums (`cross_entropy`: sum(-w * logp);
  the policy-gradient losses: sum(-ratio * A)); skyrl-tx divides each datum's sum by the sum of its weights (or of
  an all-ones mask when there are none). Two consequences are repaired here, exactly:
  - `importance_sampling` / `ppo`: each datum's advantages are multiplied by its length, undoing the division.
  - `cross_entropy` with negative weights, which is how the SDK's `forward_backward_custom` (DPO, GSPO) sends the
    gradient of a client-side loss (weights = -dC/dlogp): dividing by a negative or near-zero weight sum flips or
    blows up the gradient. Such a datum is re-sent as `importance_sampling` with old log-probs equal to the
    log-probs of the `forward` the SDK made of the same tokens just before (cached here), advantages = weights x
    length: at ratio 1 its gradient is exactly that of sum(-w * logp).
  `cross_entropy` with non-negative weights (SFT) keeps the server's per-datum mean: the same direction, and Adam
  makes the overall scale moot; per-datum weighting differs from the hosted service when datums carry different
  numbers of weighted tokens.

Usage: python wire_adapter.py UPSTREAM_URL PORT BASE_MODEL [FILES_DIR]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import httpx
import numpy as np
import uvicorn
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from tinker.proto import tinker_public_pb2 as pb

PROTO = "application/x-protobuf"
UNREACHABLE_DELAY_S = 1.0
EXTERNAL_PREFIX = "external-"  # sampler checkpoint name that backs an emulated external-weights export
_NP = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
_SHORT_SAMPLER_PATH = re.compile(r"^tinker://[^/]+/[^/]+$")
_RELAYED_HEADERS = {"location", "expires", "content-disposition", "retry-after"}
_NAME = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_INT64: "int64", pb.DTYPE_INT32: "int64"}


class Adapter:
    def __init__(self, upstream: str, port: int, base_model: str, files_dir: str | None = None):
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.base_model = base_model
        self.client = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        self.prompt_len: dict[str, int] = {}  # asample request_id -> prompt length in tokens
        self.external: dict[str, str] = {}  # save_weights_external request_id -> export name
        self.session_models: dict[str, list[str]] = {}  # session_id -> model_ids created in it
        self.forward_tokens: dict[str, list[tuple]] = {}  # forward request_id -> token tuples of its datums
        self.logprobs: dict[tuple, list[float]] = {}  # (model_id, tokens) -> target logprobs of the last forward
        # unpacked weight exports, served under /_files/ (the harness points this into its own workdir)
        self.files = Path(files_dir) if files_dir else Path(tempfile.mkdtemp(prefix="tinker-adapter-files-"))
        self.files.mkdir(parents=True, exist_ok=True)
        self.ttls: dict[str, int | None] = {}  # "<run>/<checkpoint id>" -> the last TTL set (None: removed)

    # ------------------------------------------------------------------ plumbing
    async def forward(self, request: Request, path: str, body: bytes | None = None, headers=None,
                      method: str | None = None) -> Response | httpx.Response:
        skip = ("host", "content-length", "content-encoding")
        h = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        h.update(headers or {})
        try:
            return await self.client.request(method or request.method, path, params=request.query_params,
                                             content=await request.body() if body is None else body, headers=h)
        except httpx.TransportError as e:
            # Server gone or not up: answer what a gateway in front of it would, a 502, but only after a pause.
            # The SDK retries a 5xx from retrieve_future at once, without backoff, so an immediate answer would
            # have it spin at full speed on our 2 cores until the caller's .result(timeout=...) gives up.
            await asyncio.sleep(UNREACHABLE_DELAY_S)
            return JSONResponse({"detail": f"upstream Tinker-API server unreachable: {e!r}"}, 502)

    def relay(self, r) -> Response:
        if isinstance(r, Response):
            return r
        headers = {k: v for k, v in r.headers.items() if k.lower() in _RELAYED_HEADERS}
        if "location" in headers and headers["location"].startswith(self.upstream):
            # the server's redirects (checkpoint archive -> download) name the server: keep clients on the adapter
            headers["location"] = f"http://127.0.0.1:{self.port}" + headers["location"][len(self.upstream):]
        return Response(r.content, r.status_code, headers=headers, media_type=r.headers.get("content-type"))

    # ------------------------------------------------------------------ protobuf <-> JSON
    @staticmethod
    def _tensor_to_json(t: pb.Tensor) -> dict:
        dt = _NP[t.dtype]
        shape = list(t.shape)
        if t.HasField("sparse_csr"):  # CSR (2-D only): densify
            vals = np.frombuffer(t.sparse_csr.values, dtype=dt)
            crow = np.frombuffer(t.sparse_csr.crow_indices, dtype=np.int64)
            col = np.frombuffer(t.sparse_csr.col_indices, dtype=np.int64)
            arr = np.zeros(shape, dtype=dt)
            for r in range(len(crow) - 1):
                arr[r, col[crow[r]:crow[r + 1]]] = vals[crow[r]:crow[r + 1]]
        else:
            arr = np.frombuffer(t.dense, dtype=dt)
        return {"data": arr.reshape(-1).tolist(), "dtype": _NAME[t.dtype], "shape": shape}

    def fwdbwd_proto_to_json(self, body: bytes) -> tuple[dict, bool]:
        msg = pb.ForwardBackwardRequest()
        msg.ParseFromString(body)
        data = []
        for d in msg.data:
            chunks = []
            for c in d.model_input:
                if c.WhichOneof("chunk") != "encoded_text":
                    raise ValueError("only text chunks are supported by this adapter")
                chunks.append({"type": "encoded_text",
                               "tokens": np.frombuffer(c.encoded_text.tokens, dtype=np.int32).tolist()})
            data.append({"model_input": {"chunks": chunks},
                         "loss_fn_inputs": {k: self._tensor_to_json(v) for k, v in d.loss_fn_inputs.items()}})
        cfg = dict(msg.loss_fn_config.items()) or None
        inp = {"data": data, "loss_fn": msg.loss_fn, "loss_fn_config": cfg}
        key = "forward_input" if msg.forward_only else "forward_backward_input"
        return {"model_id": msg.model_id, "seq_id": msg.seq_id, key: inp}, msg.forward_only

    @staticmethod
    def fwdbwd_json_to_proto(res: dict) -> bytes:
        out = pb.ForwardBackwardOutput()
        out.loss_fn_output_type = res.get("loss_fn_output_type") or "ArrayRecord"
        for k, v in (res.get("metrics") or {}).items():
            out.metrics[k] = float(v)
        outs = res.get("loss_fn_outputs") or []
        if "loss:sum" not in out.metrics and outs and all("elementwise_loss" in o for o in outs):
            out.metrics["loss:sum"] = float(sum(np.sum(o["elementwise_loss"]["data"]) for o in outs))
        if outs:
            rec = out.loss_fn_outputs.add()
            rec.num_datums = len(outs)
            for name in outs[0]:
                is_float = outs[0][name].get("dtype", "float32") == "float32"
                npdt = np.float32 if is_float else np.int64
                arrays = [np.asarray(o[name]["data"], dtype=npdt).reshape(-1) for o in outs]
                field = rec.fields[name]
                field.data = b"".join(a.tobytes() for a in arrays)
                field.offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype(np.int64).tobytes()
                field.dtype = pb.DTYPE_FLOAT32 if is_float else pb.DTYPE_INT64
        return out.SerializeToString()

    @staticmethod
    def sample_json_to_proto(res: dict, prompt_len: int | None) -> bytes:
        out = pb.SampleResponse()
        for s in res.get("sequences", []):
            seq = out.sequences.add()
            seq.stop_reason = pb.STOP_REASON_STOP if s.get("stop_reason") == "stop" else pb.STOP_REASON_LENGTH
            seq.tokens = np.asarray(s.get("tokens", []), dtype=np.int32).tobytes()
            if s.get("logprobs") is not None:
                seq.logprobs = np.asarray(s["logprobs"], dtype=np.float32).tobytes()
        if res.get("prompt_logprobs") is not None:
            pl = [float("nan") if x is None else x for x in res["prompt_logprobs"]]
            if prompt_len is not None and len(pl) == prompt_len - 1:
                pl = [float("nan")] + pl
            out.prompt_logprobs = np.asarray(pl, dtype=np.float32).tobytes()
        return out.SerializeToString()

    # ------------------------------------------------------------------ routes
    async def client_config(self, request: Request):
        r = await self.forward(request, "/api/v1/client/config")
        if not isinstance(r, Response) and r.status_code == 404:
            return JSONResponse({})
        return self.relay(r)

    async def forward_backward(self, request: Request):
        body = await request.body()
        if PROTO not in request.headers.get("content-type", ""):
            return self.relay(await self.forward(request, "/api/v1/forward_backward", body))
        if request.headers.get("content-encoding", "").lower() == "zstd":
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
        req, forward_only = self.fwdbwd_proto_to_json(body)
        path = "/api/v1/forward" if forward_only else "/api/v1/forward_backward"
        if not forward_only:
            self.hosted_loss_semantics(req["model_id"], req["forward_backward_input"])
        r = await self.forward(request, path, json.dumps(req).encode(), {"content-type": "application/json"})
        if forward_only and not isinstance(r, Response) and r.status_code == 200:
            fut = r.json()
            if isinstance(fut, dict) and "request_id" in fut:
                self.forward_tokens[str(fut["request_id"])] = [
                    (req["model_id"], tuple(t for c in d["model_input"]["chunks"] for t in c["tokens"]))
                    for d in req["forward_input"]["data"]]
        return self.relay(r)

    def hosted_loss_semantics(self, model_id: str, inp: dict) -> None:
        """Rewrite a forward_backward so skyrl-tx computes the hosted service's summed loss (see the module doc)."""
        data = inp["data"]
        lengths = [len(d["loss_fn_inputs"]["target_tokens"]["data"]) for d in data]
        if inp["loss_fn"] in ("importance_sampling", "ppo"):
            for d, n in zip(data, lengths, strict=True):
                if "weights" not in d["loss_fn_inputs"]:
                    adv = d["loss_fn_inputs"]["advantages"]
                    adv["data"] = [a * n for a in adv["data"]]
            return
        signed = any(min(d["loss_fn_inputs"].get("weights", {}).get("data") or [0.0]) < 0 for d in data)
        if inp["loss_fn"] != "cross_entropy" or not signed:
            return
        keys = [(model_id, tuple(t for c in d["model_input"]["chunks"] for t in c["tokens"])) for d in data]
        old = [self.logprobs.get(k) for k in keys]
        if any(o is None or len(o) != n for o, n in zip(old, lengths, strict=True)):
            return  # no forward of these tokens seen: leave the request as the SDK sent it
        for d, o, n in zip(data, old, lengths, strict=True):
            inputs = d["loss_fn_inputs"]
            weights = inputs.pop("weights")["data"]
            inputs["logprobs"] = {"data": list(o), "dtype": "float32", "shape": [n]}
            inputs["advantages"] = {"data": [w * n for w in weights], "dtype": "float32", "shape": [n]}
        inp["loss_fn"] = "importance_sampling"

    async def retrieve_future(self, request: Request):
        r = await self.forward(request, "/api/v1/retrieve_future", headers={"accept": "application/json"})
        if isinstance(r, Response) or r.status_code != 200:
            return self.relay(r)
        res = r.json()
        rid = str(json.loads(await request.body()).get("request_id"))
        if rid in self.external and isinstance(res, dict) and res.get("path"):
            name = self.external.pop(rid)
            run = res["path"].removeprefix("tinker://").split("/")[0]
            return JSONResponse({"path": f"tinker://{run}/external_weights/{name}", "size_bytes": None,
                                 "type": "save_weights_external"})
        if isinstance(res, dict) and isinstance(res.get("path"), str) and _SHORT_SAMPLER_PATH.match(res["path"]):
            # save_weights_for_sampler: skyrl-tx answers tinker://<run>/<name>, the hosted service (and skyrl-tx's
            # own list_checkpoints) tinker://<run>/sampler_weights/<name>; the server accepts both for sampling
            run, name = res["path"].removeprefix("tinker://").split("/")
            return JSONResponse({**res, "path": f"tinker://{run}/sampler_weights/{name}"})
        if rid in self.forward_tokens and isinstance(res, dict) and "loss_fn_outputs" in res:
            for key, out in zip(self.forward_tokens.pop(rid), res["loss_fn_outputs"], strict=False):
                self.logprobs[key] = list(out["logprobs"]["data"])
            while len(self.logprobs) > 4096:  # keep the cache small: only the latest forward matters
                self.logprobs.pop(next(iter(self.logprobs)))
        if PROTO in request.headers.get("accept", "") and isinstance(res, dict):
            if "loss_fn_outputs" in res:
                return Response(self.fwdbwd_json_to_proto(res), 200, media_type=PROTO)
            if "sequences" in res:
                return Response(self.sample_json_to_proto(res, self.prompt_len.pop(rid, None)), 200,
                                media_type=PROTO)
        return self.relay(r)

    async def get_sampler(self, request: Request):
        r = await self.forward(request, request.url.path)
        if not isinstance(r, Response) and r.status_code == 404:
            return JSONResponse({"sampler_id": request.path_params["sid"], "base_model": self.base_model,
                                 "model_path": None})
        return self.relay(r)

    async def asample(self, request: Request):
        r = await self.forward(request, "/api/v1/asample")
        if isinstance(r, Response) or r.status_code != 200:
            return self.relay(r)
        fut = r.json()
        req = json.loads(await request.body())
        if isinstance(fut, dict) and "request_id" in fut:
            chunks = (req.get("prompt") or {}).get("chunks") or []
            self.prompt_len[str(fut["request_id"])] = sum(len(c.get("tokens", [])) for c in chunks)
            if not fut.get("sample_sequence_ids"):
                n = int(req.get("num_samples", 1))
                fut["sample_sequence_ids"] = [f"{fut['request_id']}:{i}" for i in range(n)]
            return JSONResponse(fut)
        return self.relay(r)

    async def create_model(self, request: Request):
        r = await self.forward(request, "/api/v1/create_model")
        if not isinstance(r, Response) and r.status_code == 200:
            with contextlib.suppress(Exception):
                session_id = json.loads(await request.body())["session_id"]
                self.session_models.setdefault(session_id, []).append(r.json()["model_id"])
        return self.relay(r)

    async def finish_session(self, request: Request):
        r = await self.forward(request, request.url.path)
        if not isinstance(r, Response) and r.status_code == 404:
            # No such route upstream: unload the session's models ourselves, which frees their LoRA slots now
            # rather than after the server's stale-session timeout.
            for model_id in self.session_models.pop(request.path_params["sid"], []):
                with contextlib.suppress(httpx.HTTPError):
                    await self.client.post("/api/v1/unload_model", json={"model_id": model_id})
            return JSONResponse(None)
        return self.relay(r)

    async def save_weights_external(self, request: Request):
        req = json.loads(await request.body())
        name = str(req["path"])
        body = {"model_id": req["model_id"], "path": EXTERNAL_PREFIX + name, "seq_id": req.get("seq_id"),
                "type": "save_weights_for_sampler"}
        r = await self.forward(request, "/api/v1/save_weights_for_sampler", json.dumps(body).encode(),
                               {"content-type": "application/json"})
        if not isinstance(r, Response) and r.status_code == 200:
            fut = r.json()
            self.external[str(fut["request_id"])] = name
        return self.relay(r)

    async def external_weights_urls(self, request: Request):
        run, name = request.path_params["run"], request.path_params["name"]
        r = await self.forward(request, f"/api/v1/training_runs/{run}/checkpoints/{EXTERNAL_PREFIX}{name}/download",
                               body=b"", method="GET")
        if isinstance(r, Response) or r.status_code != 200:
            return self.relay(r)
        dest = self.files / run / name
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
        base = f"http://127.0.0.1:{self.port}/_files/{run}/{name}"
        urls = {p.relative_to(dest).as_posix(): f"{base}/{p.relative_to(dest).as_posix()}"
                for p in sorted(dest.rglob("*")) if p.is_file()}
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
        return JSONResponse({"urls": urls, "expires": expires.isoformat()})

    async def set_ttl(self, request: Request):
        r = await self.forward(request, request.url.path)
        if not isinstance(r, Response) and r.status_code == 404:  # no such route upstream: emulated
            ttl = json.loads(await request.body()).get("ttl_seconds")
            if ttl is not None and not 3600 <= ttl <= 10 * 365 * 86400:
                return JSONResponse({"detail": f"ttl_seconds {ttl} is not between 1 hour and 10 years"}, 400)
            self.ttls[f"{request.path_params['run']}/{request.path_params['cid']}"] = ttl
            return JSONResponse(None)
        return self.relay(r)

    async def list_ttls(self, request: Request):
        return JSONResponse(self.ttls)

    async def serve_file(self, request: Request):
        path = (self.files / request.path_params["path"]).resolve()
        if not path.is_relative_to(self.files.resolve()) or not path.is_file():
            return JSONResponse({"detail": "not found"}, 404)
        return FileResponse(path)

    async def passthrough(self, request: Request):
        return self.relay(await self.forward(request, request.url.path))

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/v1/client/config", self.client_config, methods=["POST", "GET"]),
            Route("/api/v1/forward_backward", self.forward_backward, methods=["POST"]),
            Route("/api/v1/retrieve_future", self.retrieve_future, methods=["POST"]),
            Route("/api/v1/samplers/{sid}", self.get_sampler, methods=["GET"]),
            Route("/api/v1/asample", self.asample, methods=["POST"]),
            Route("/api/v1/sessions/{sid}/finish", self.finish_session, methods=["POST"]),
            Route("/api/v1/create_model", self.create_model, methods=["POST"]),
            Route("/api/v1/save_weights_external", self.save_weights_external, methods=["POST"]),
            Route("/api/v1/training_runs/{run}/checkpoints/external_weights/{name}/external_weights_urls",
                  self.external_weights_urls, methods=["GET"]),
            Route("/api/v1/training_runs/{run}/checkpoints/{cid:path}/ttl", self.set_ttl, methods=["PUT"]),
            Route("/_ttls", self.list_ttls, methods=["GET"]),
            Route("/_files/{path:path}", self.serve_file, methods=["GET"]),
            Route("/{path:path}", self.passthrough, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ])


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        sys.exit("usage: python wire_adapter.py UPSTREAM_URL PORT BASE_MODEL [FILES_DIR]")
    adapter = Adapter(argv[0], int(argv[1]), argv[2], argv[3] if len(argv) == 4 else None)
    uvicorn.run(adapter.app(), host="127.0.0.1", port=adapter.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
