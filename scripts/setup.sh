#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtualenv in .venv, torch, the package with the given extras, and the
# compiled extension built against that torch. Rebuilds only when csrc/, setup.py, pyproject.toml or torch changed.
#   bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh dev,gemma
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-dev,gemma}
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip setuptools wheel ninja
"$VPY" -m pip install -q "torch>=2.11"

# Build traps on machines without a GPU: CUDA_HOME unset, no visible arch.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -z "${MATRYOSHKA_EXT_CUDA:-}" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] \
   && "$VPY" -c "import torch,sys; sys.exit(torch.version.cuda is None)"; then
  export MATRYOSHKA_EXT_CUDA=1   # compile the CUDA kernels whenever we can: a CUDA compile error must fail
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

stamp=$( { cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; \
           "$VPY" -c "import torch; print(torch.__version__)"; echo "${MATRYOSHKA_EXT_CUDA:-auto}|$EXTRAS"; } \
         | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.mx_stamp 2>/dev/null)" != "$stamp" ] || ! "$VPY" -c "import matryoshka_ext" 2>/dev/null; then
  echo "setup: installing matryoshka-ext[$EXTRAS] and building the extension (CUDA=${MATRYOSHKA_EXT_CUDA:-auto})"
  "$VPY" -m pip install -q --no-build-isolation -e ".[$EXTRAS]"
  echo "$stamp" > .venv/.mx_stamp
fi
"$VPY" -c "import matryoshka_ext as mx, torch; print('setup: matryoshka_ext ready, torch', torch.__version__, \
'| CUDA kernels compiled:', mx.has_cuda_kernels())"
