#!/usr/bin/env bash
# Install the local Tinker-API server used by the `tinker` tests into its OWN virtualenv.
#   tests/tinker_harness/install.sh [VENV_DIR]      (default: <repo>/.tinker-server/venv)
#
# The server is skyrl-tx 0.3.0 (JAX on CPU). Its pins (transformers, jax, ...) differ from fai-rl's, so it never
# shares .venv. First run ~2-2.5 min and ~2.2 GB; afterwards a no-op that returns in well under a second.
# CPU torch is installed first so nothing pulls the multi-GB CUDA wheels; skyrl-tx's [jax]/[gpu] extras are never
# used (they pull CUDA jax).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${1:-$repo/.tinker-server/venv}
py=${PYTHON:-python3}
# Bump when the package list below changes: the marker then no longer matches and the venv is brought up to date.
stamp="skyrl-tx==0.3.0 tinker==0.38.0 torch==2.13.0 v1"
marker=$venv/.fai-rl-tinker-server
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
echo "installing the local Tinker-API server (skyrl-tx 0.3.0, CPU) into $venv (~2.5 min, first time only)"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "skyrl-tx[tinker]==0.3.0" "jax>=0.8,<1.0" "flax>=0.12.2" "optax>=0.2.5" "tinker==0.38.0" \
  uvicorn starlette httpx zstandard
"$venv/bin/python" -c "import tx.tinker.api, jax, tinker, uvicorn, starlette, httpx, zstandard"
echo "$stamp" > "$marker"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("installed:", ", ".join(f"{p} {m.version(p)}" for p in ("skyrl-tx", "jax", "flax", "transformers", "tinker")))
PY
