"""`fai-rl-serve`: an OpenAI-compatible HTTP server for a trained run or a model, for a quick local check of a fine-tune
and as the endpoint the API paths (fai-rl-inference, fai-rl-eval, an HTTP judge) are tested against.

    fai-rl-serve runs/sft                      # http://127.0.0.1:8000/v1, model id "runs/sft"
    fai-rl-serve fai-rl/tiny --port 8011 --served-model-name tiny
    python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none'); ..."

RUN_OR_MODEL is anything fai-rl-generate takes (run dir, final/ or checkpoint-N, LoRA adapter, hub id, built-in
model). Endpoints: GET /v1/models, POST /v1/completions and /v1/chat/completions (n, temperature, top_p, max_tokens,
stop, stream). Concurrent requests are batched into one generate call (fai_rl.inference.server). Binds 127.0.0.1
unless --host says otherwise; there is no authentication.
"""

from __future__ import annotations

import argparse
import sys

from fai_rl.cli import report_errors
from fai_rl.errors import BackendError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fai-rl-serve", description="Serve a model over an OpenAI-compatible API.")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run dir, final/ or checkpoint dir, adapter dir, hub id or "
                   "built-in model")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name", default=None, help="model id clients send (default: RUN_OR_MODEL)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences generated together")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for others to batch with")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-serve; returns the exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return report_errors("fai-rl-serve", lambda: _run(args), "server stopped")


def _run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fai_rl.inference.server import build_app
    except ImportError as e:
        raise BackendError(f"fai-rl-serve needs fastapi and uvicorn ({e.name} is missing); pip install fai-rl "
                           "(they are dependencies) or pip install fastapi uvicorn.") from None
    from fai_rl.evaluation.samplers import open_sampler
    from fai_rl.models.source import resolve_model_source

    source = resolve_model_source(args.model, what="RUN_OR_MODEL")
    sampler = open_sampler(source, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    name = args.served_model_name or args.model
    app = build_app(sampler, name, max_wait_ms=args.max_wait_ms)
    print(f"fai-rl-serve: {source.describe()} as '{name}' at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
