#!/usr/bin/env bash
# Create .venv (if missing) and install fai-rl into it with the right torch for this machine.
#   scripts/install.sh [EXTRAS]      e.g. scripts/install.sh dev      (EXTRAS: dev, quant, deepspeed; comma-separated)
# CPU-only machines get torch==2.13.0 (the CPU build; an unpinned torch would pull several GB of CUDA packages).
# Machines with an NVIDIA GPU get the registry's default (CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
export DS_BUILD_OPS=${DS_BUILD_OPS:-0}  # deepspeed is an sdist: build no CUDA ops at install (JIT on use)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" "torch==2.13.0"
  fi
fi
if [ -n "$extras" ]; then
  "${pip[@]}" -e ".[$extras]"
else
  "${pip[@]}" -e .
fi
echo "installed: $(.venv/bin/python -c 'import fai_rl, torch; print("fai-rl", fai_rl.__version__, "torch", torch.__version__)')"
