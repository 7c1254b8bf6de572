#!/usr/bin/env bash
# The benchmark environment .venv-bench/: the peer libraries' pins clash with the project venv (.venv), so they
# live here beside the same torch and our package compiled against it. Idempotent; prints what imports.
#   bash scripts/bench_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-bench
TORCH=${BENCH_TORCH:-2.14.1}   # the project venv's torch, so that both environments time the same kernels
# The peer releases benchmarks/peers.py was written against (it drives some of their trainer internals).
PEERS=${BENCH_PEERS:-"sae-lens==6.54.12 eai-sparsify==1.3.3 dictionary-learning==0.1.0"}

[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
VPY=$PWD/$VENV/bin/python
pip_q() { "$VPY" -m pip install -q "$@"; }

if [ ! -f $VENV/.peers_ok ]; then
  pip_q --upgrade pip setuptools wheel ninja
  pip_q "torch==$TORCH"
  # Every later install is pinned to this torch so that no peer's requirement swaps it.
  echo "torch==$TORCH" > $VENV/torch-pin.txt
  pip_q -c $VENV/torch-pin.txt numpy safetensors pyyaml pytest pytest-benchmark psutil matplotlib
  # shellcheck disable=SC2086
  pip_q -c $VENV/torch-pin.txt $PEERS
  # dictionary-learning -> nnsight -> torchvision: a torchvision wheel not built for this torch breaks at import
  # ("operator torchvision::nms does not exist"), and no benchmark needs it.
  if ! "$VPY" -c "import torchvision" 2>/dev/null; then "$VPY" -m pip uninstall -q -y torchvision; fi
  touch $VENV/.peers_ok
fi

# Our package. The extension is built in-tree (matryoshka_ext/_C*.so, shared with .venv): with the same torch, the
# build that scripts/setup.sh made for .venv loads here as-is, and rebuilding would overwrite it (CUDA kernels and
# all) with a CPU-only one. So: link the tree, and build only when the extension does not load in this env.
site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD" > "$site/matryoshka_ext_tree.pth"
if ! err=$(cd /tmp && "$VPY" -c "import matryoshka_ext" 2>&1); then
  echo "bench_env: the in-tree extension does not load here (${err##*$'\n'}); building it against this torch"
  MATRYOSHKA_EXT_CUDA=${MATRYOSHKA_EXT_CUDA:-0} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$VPY" -m pip install -q --no-build-isolation --no-deps -e .
fi

"$VPY" - <<'PY'
import importlib.metadata as md

import torch

import matryoshka_ext  # noqa: F401
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE  # noqa: F401
from sae_lens import MatryoshkaBatchTopKTrainingSAE  # noqa: F401
from sparsify import SparseCoder  # noqa: F401

vers = ", ".join(f"{p} {md.version(p)}" for p in ("sae-lens", "dictionary-learning", "eai-sparsify"))
print(f"bench_env: torch {torch.__version__}; matryoshka_ext ok; {vers}")
PY
