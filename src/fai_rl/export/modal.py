"""--target modal: modal_app.py + client.py + DEPLOY.md next to the exported model (OUT/model/).

The app is a `modal.App` with one class (`@app.cls` with the GPU type and autoscaling from the flags, the model loaded
in `@modal.enter`, `POST /generate` through `@modal.fastapi_endpoint`). Its serving logic is the plain class
`Generator`, importable without modal installed, which is what the tests call on the exported tiny model.

Where the weights live: by default the model dir is added to the image with `add_local_dir` (uploaded on each
deploy, nothing else to manage: right for models up to a few GB). With --volume NAME the app mounts a Modal Volume
instead, filled once with `modal volume put` (DEPLOY.md), so deploys stay fast for large models.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fai_rl.errors import UsageError

# Modal's GPU types (modal.com/docs/guide/gpu); `TYPE:N` asks for N of them; `none` serves on CPU.
GPU_TYPES = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000", "H100", "H100!",
             "H200", "B200", "B200+")
# What an hour of one GPU roughly cost on Modal when this was written (modal.com/pricing): for DEPLOY.md only.
GPU_NOTES = {"T4": "16 GB, cheapest (~$0.60/h)", "L4": "24 GB (~$0.80/h), a good default for models up to ~7B in bf16",
             "A10G": "24 GB (~$1.10/h)", "L40S": "48 GB (~$1.95/h), Modal's suggestion for inference",
             "A100-80GB": "80 GB (~$2.50/h)", "H100": "80 GB (~$3.95/h), fastest per token"}
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LARGE_MODEL_BYTES = 5 * 1024**3  # above this, suggest a Volume


@dataclass
class ModalSettings:
    """The serving settings written into modal_app.py (one flag each)."""

    app_name: str
    gpu: str | None = "L4"
    min_containers: int = 0
    max_containers: int = 1
    scaledown_window: int = 300
    timeout: int = 600
    volume: str | None = None


def check_gpu(value: str) -> str | None:
    """A Modal GPU string (`L4`, `a100-80gb`, `H100:2`) normalised, or None for `none`; UsageError otherwise."""
    if value.lower() in ("none", "cpu"):
        return None
    kind, _, count = value.partition(":")
    match = next((g for g in GPU_TYPES if g.lower() == kind.lower()), None)
    if match is None or (count and not (count.isdigit() and 1 <= int(count) <= 8)):
        raise UsageError(f"--gpu: '{value}' is not a Modal GPU; use one of {', '.join(GPU_TYPES)} (optionally :N for "
                         "N GPUs, 1-8), or none to serve on CPU.")
    return f"{match}:{count}" if count else match


def check_settings(s: ModalSettings) -> None:
    """Every bad serving flag at once, before any model is loaded."""
    problems = []
    if not APP_NAME.match(s.app_name):
        problems.append(f"--app-name: '{s.app_name}' must be 1-64 letters, digits, '.', '_' or '-'.")
    if s.min_containers < 0:
        problems.append(f"--min-containers: {s.min_containers} must be >= 0.")
    if s.max_containers < 1 or s.max_containers < s.min_containers:
        problems.append(f"--max-containers: {s.max_containers} must be >= 1 and >= --min-containers "
                        f"({s.min_containers}).")
    if not 2 <= s.scaledown_window <= 3600:
        problems.append(f"--scaledown-window: {s.scaledown_window} s; Modal accepts 2 to 3600 seconds.")
    if s.timeout < 10:
        problems.append(f"--timeout: {s.timeout} s is too short to load a model; use at least 10.")
    if s.volume is not None and not APP_NAME.match(s.volume):
        problems.append(f"--volume: '{s.volume}' must be 1-64 letters, digits, '.', '_' or '-'.")
    if problems:
        raise UsageError(" ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def write_modal_app(out: Path, model_dir: Path, s: ModalSettings) -> list[Path]:
    """modal_app.py, client.py and DEPLOY.md into `out` (beside `model_dir`); returns the paths written."""
    import torch
    import transformers

    packages = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                "safetensors", "fastapi[standard]"]
    if any(model_dir.glob("*.model")) or _needs_sentencepiece(model_dir):
        packages.append("sentencepiece")
    values = {"APP_NAME": repr(s.app_name), "GPU": repr(s.gpu), "MIN_CONTAINERS": repr(s.min_containers),
              "MAX_CONTAINERS": repr(s.max_containers), "SCALEDOWN_WINDOW": repr(s.scaledown_window),
              "TIMEOUT": repr(s.timeout), "VOLUME": repr(s.volume),
              "PYTHON_VERSION": repr(f"{sys.version_info.major}.{sys.version_info.minor}"),
              "PACKAGES": repr(packages), "MODEL_NAME": model_dir.name, "APP_NAME_BARE": s.app_name.lower()}
    written = []
    for template, name in (("modal_app.py.tmpl", "modal_app.py"), ("client.py.tmpl", "client.py")):
        text = resources.files("fai_rl.export").joinpath(template).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    (out / "DEPLOY.md").write_text(deploy_doc(model_dir, s), encoding="utf-8")
    written.append(out / "DEPLOY.md")
    return written


def deploy_doc(model_dir: Path, s: ModalSettings) -> str:
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    gpu = s.gpu or "none (CPU)"
    volume_steps = (
        f"The weights are read from the Modal Volume `{s.volume}`; fill it once (and again after each new export):\n\n"
        f"```bash\nmodal volume create {s.volume}\nmodal volume put {s.volume} model/ /\n```\n"
    ) if s.volume else (
        f"The model dir (`model/`, {size / 1e6:,.1f} MB) is added to the image with `add_local_dir` and uploaded on "
        "each deploy." + (" It is large: a Volume keeps deploys fast; export again with `--volume NAME`."
                          if size > LARGE_MODEL_BYTES else "") + "\n"
    )
    return f"""# Deploying this model on Modal

Written by `fai-rl-export --target modal`. Serving settings (edit them at the top of `modal_app.py`):
GPU {gpu}, {s.min_containers} to {s.max_containers} containers, idle containers stop after
{s.scaledown_window} s, {s.timeout} s per request.

1. Install the client and log in (once): `pip install modal` (or `pip install 'fai-rl[deploy]'`), then `modal setup`.
2. Try the serving logic here, without Modal: `python modal_app.py "What is 2 + 3?"`.
3. {volume_steps}
4. Deploy: `modal deploy modal_app.py`. It prints the endpoint URL
   (`https://<workspace>--{s.app_name.lower()}-server-generate.modal.run`). `modal serve modal_app.py` runs a
   temporary copy that reloads on edits, for trying changes.
5. Call it:

```bash
python client.py URL "What is 2 + 3?" --max-new-tokens 32
curl -X POST URL -H 'Content-Type: application/json' -d '{{"prompt": "What is 2 + 3?", "max_new_tokens": 32}}'
```

Request: `{{"prompt": str}}` or `{{"messages": [{{"role": ..., "content": ...}}]}}`, plus `max_new_tokens` (default
128), `temperature` (default 0: greedy) and `raw` (send the prompt without the chat template). Answer:
`{{"text": str, "num_tokens": int}}`; a malformed request gets HTTP 400 with the reason. The first request after the
app has scaled to zero waits for a container to start and load the model (a cold start: seconds for small models,
a minute or more for large ones); `--min-containers 1` keeps one warm, billed while idle.

Costs: Modal bills GPU time per second while a container runs, including the scale-down window after the last
request. Rough hourly prices per GPU: {"; ".join(f"{k} {v}" for k, v in GPU_NOTES.items())}
(see modal.com/pricing). Pick the smallest GPU whose memory holds the weights (2 bytes per parameter in bf16) plus
the KV cache. Stop everything with `modal app stop {s.app_name}`.
"""


def _needs_sentencepiece(model_dir: Path) -> bool:
    config = model_dir / "tokenizer_config.json"
    return config.exists() and "sentencepiece" in config.read_text(encoding="utf-8").lower()
