"""An OpenAI-compatible HTTP API over fai-rl's sampling engine: /v1/models, /v1/completions, /v1/chat/completions.

Built on FastAPI + uvicorn (the ASGI stack vLLM's and TGI's OpenAI servers use): request routing, JSON errors and
server-sent events come from them, the OpenAI wire format is written here. Concurrent requests are batched: handlers
put their prompts on one queue, and a single worker thread takes everything that arrived within `max_wait_ms`,
groups it by sampling knobs (temperature, top_p: one generate call samples with one setting) and runs one
generate_local call per group with the group's longest max_tokens, each reply cut to its own. The model is only ever
touched from that thread. `stream: true` answers in OpenAI's SSE chunks; the engine hands back whole completions
(the graph decoder runs the batch to the end), so the chunks follow once the batch is done, one per token.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime

import asyncio
import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field

from fai_rl.sampling import Completion


@dataclass
class _Job:
    prompts: list[list[int]]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread running the sampler on batches of queued requests (see the module doc)."""

    def __init__(self, sampler, max_wait_ms: float = 10.0):
        self.sampler, self.max_wait = sampler, max_wait_ms / 1000
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batches: list[int] = []  # requests per generate call (tests and logs read it)
        threading.Thread(target=self._loop, daemon=True, name="fai-rl-serve-batcher").start()

    def submit(self, prompts, n, temperature, top_p, max_tokens) -> Future:
        job = _Job(prompts, n, temperature, top_p, max_tokens)
        self.jobs.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            jobs = [self.jobs.get()]
            deadline = time.monotonic() + self.max_wait
            while (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(self.jobs.get(timeout=left))
                except queue.Empty:
                    break
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.temperature, job.top_p if job.temperature > 0 else 1.0, job.n), []).append(job)
            for (temperature, top_p, n), group in groups.items():
                self._run(group, temperature, top_p, n)

    def _run(self, group: list[_Job], temperature: float, top_p: float, n: int) -> None:
        prompts = [p for job in group for p in job.prompts]
        longest = max(job.max_tokens for job in group)
        try:
            out = self.sampler.generate(prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=longest,
                                        seed=int(time.time_ns() % 2**31))
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            for job in group:
                job.future.set_exception(e)
            return
        self.batches.append(len(group))
        start = 0
        for job in group:
            mine = out[start : start + len(job.prompts)]
            start += len(job.prompts)
            job.future.set_result(([[_cut(self.sampler.tokenizer, c, job.max_tokens) for c in cs] for cs in mine],
                                   len(group)))


def _cut(tokenizer, c: Completion, max_tokens: int) -> Completion:
    if len(c.tokens) <= max_tokens:
        return c
    kept = c.tokens[:max_tokens]
    return Completion(kept, tokenizer.decode(kept, skip_special_tokens=True), None, False)


def _apply_stop(text: str, stop) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class RequestError(ValueError):
    """A request the API refuses (400), with the parameter it is about."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _knobs(body: dict) -> dict:
    def number(name, default, lo, hi):
        value = body.get(name, default)
        value = default if value is None else value
        if not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise RequestError(f"{name}: {value!r} must be a number in [{lo}, {hi}]", name)
        return value

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"max_tokens: {max_tokens!r} must be a positive integer", "max_tokens")
    n = body.get("n") or 1
    if not isinstance(n, int) or not 1 <= n <= 64:
        raise RequestError(f"n: {n!r} must be an integer in [1, 64]", "n")
    temperature = float(number("temperature", 1.0, 0.0, 2.0))
    top_p = float(number("top_p", 1.0, 0.0, 1.0)) or 1.0
    return {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}


def build_app(sampler, model_name: str, max_wait_ms: float = 10.0):
    """The FastAPI app serving `sampler` (a fai_rl.evaluation.samplers.Sampler) under the id `model_name`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from fai_rl.sampling import render_chat

    app = FastAPI(title="fai-rl-serve")
    batcher = Batcher(sampler, max_wait_ms)
    app.state.batcher = batcher
    tok = sampler.tokenizer
    created = int(time.time())
    context = getattr(getattr(getattr(sampler, "model", None), "config", None), "max_position_embeddings", None)

    def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "fai-rl"}]}

    async def answer(request: Request, chat: bool):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object")
            knobs = _knobs(body)
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages or \
                        not all(isinstance(m, dict) and "role" in m for m in messages):
                    raise RequestError("messages: a non-empty list of {role, content}", "messages")
                texts = [[{"role": m["role"], "content": _text(m.get("content"))} for m in messages]]
                prompts = [render_chat(tok, texts[0])]
            else:
                prompt = body.get("prompt")
                prompt = [prompt] if isinstance(prompt, str) else prompt
                if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) for p in prompt):
                    raise RequestError("prompt: a string or a list of strings", "prompt")
                prompts = [tok(p)["input_ids"] for p in prompt]
            longest = max(len(p) for p in prompts) + knobs["max_tokens"]
            if context and longest > context:  # worded as vLLM words it, so clients that parse it understand
                raise RequestError(f"This model's maximum context length is {context} tokens. However, you "
                                   f"requested {longest} tokens ({longest - knobs['max_tokens']} in the messages, "
                                   f"{knobs['max_tokens']} in the completion).", "messages" if chat else "prompt")
        except RequestError as e:
            return error(400, str(e), e.param)
        except json.JSONDecodeError:
            return error(400, "the body is not valid JSON")
        future = batcher.submit(prompts, knobs["n"], knobs["temperature"], knobs["top_p"], knobs["max_tokens"])
        try:
            groups, batched = await asyncio.wrap_future(future)
        except Exception as e:  # noqa: BLE001 - the engine's failure, reported in OpenAI's error shape
            return error(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        choices, used = [], 0
        for p, cs in enumerate(groups):
            for c in cs:
                text, stopped = _apply_stop(c.text, body.get("stop"))
                reason = "stop" if (stopped or c.stopped) else "length"
                choices.append((len(choices), text, reason, c))
                used += len(c.tokens)
        usage = {"prompt_tokens": sum(len(p) for p in prompts) * knobs["n"], "completion_tokens": used,
                 "total_tokens": sum(len(p) for p in prompts) * knobs["n"] + used}
        headers = {"x-fai-rl-batched-requests": str(batched)}  # requests that shared this generate call
        if body.get("stream"):
            return StreamingResponse(_stream(rid, chat, choices, model_name, created, tok),
                                     media_type="text/event-stream", headers=headers)
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": int(time.time()), "model": model_name, "usage": usage,
                "choices": [({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": r,
                              "logprobs": None} if chat else
                             {"index": i, "text": text, "finish_reason": r, "logprobs": None})
                            for i, text, r, _ in choices]}, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    return app


def _text(content) -> str:
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _stream(rid, chat, choices, model_name, created, tok):
    """OpenAI's SSE chunks: per choice the role (chat), then one piece of text per token, then the finish reason."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(index, piece, reason=None, role=False):
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": piece} if piece else {})
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": index, "text": piece, "finish_reason": reason, "logprobs": None}
        chunk = {"id": rid, "object": obj, "created": created, "model": model_name, "choices": [choice]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    for index, text, reason, c in choices:
        if chat:
            yield event(index, "", role=True)
        done = ""
        for k in range(1, len(c.tokens) + 1):  # decode growing prefixes: a piece never splits a character
            now = tok.decode(c.tokens[:k], skip_special_tokens=True)
            if len(now) > len(text):
                now = text
            if len(now) > len(done) and not now.endswith("\ufffd"):
                yield event(index, now[len(done):])
                done = now
        if len(text) > len(done):
            yield event(index, text[len(done):])
        yield event(index, "", reason=reason)
    yield "data: [DONE]\n\n"
