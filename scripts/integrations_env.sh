#!/usr/bin/env bash
# Peer environments for the integration tests whose pins clash with the project venv (.venv):
#   .venv-saebench    sae-bench          (numpy < 2, datasets < 4)
#   .venv-ctracer     circuit-tracer     (transformers <= 4.57.3, huggingface-hub < 1, nnsight >= 0.6)
#   .venv-dictlearn   dictionary-learning (nnsight < 0.4; its torchvision is removed, see below)
# Each is a thin *overlay* on .venv: a .pth line appends .venv's site-packages after the overlay's own, so torch
# (6+ GB with CUDA) is shared, not reinstalled; only the packages whose versions differ land in the overlay. pip
# never uninstalls what lives in .venv ("outside environment"), and torch is pinned to .venv's version.
# Idempotent (a stamp per env). Run after scripts/setup.sh:
#   bash scripts/integrations_env.sh [saebench|ctracer|dictlearn|all]      (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$PWD/.venv
[ -x "$BASE/bin/python" ] || { echo "integrations_env: $BASE missing; run scripts/setup.sh first" >&2; exit 1; }
BASE_PY=$("$BASE/bin/python" -c "import sys; print(sys._base_executable)")
BASE_SITE=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
TORCH=$("$BASE/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
# what .venv holds (name-version of every distribution): an overlay is re-resolved when that changes
BASE_SET=$(ls "$BASE_SITE" | grep -E '\.dist-info$' | sort | sha256sum | cut -c1-16)

overlay() {  # overlay NAME "PIP ARGS..." "IMPORT CHECK"
  local name=$1 pkgs=$2 check=$3 venv=.venv-$1
  local stamp; stamp=$(echo "$TORCH|$BASE_SET|$pkgs|v1" | sha256sum | cut -c1-16)
  if [ "$(cat "$venv/.mx_stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "integrations_env: building $venv ($pkgs)"
    [ -x "$venv/bin/python" ] || "$BASE_PY" -m venv "$venv"
    local site; site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # executed by site.py after the overlay's own dir is on sys.path: .venv's packages come after it
    echo "import site; site.addsitedir('$BASE_SITE')" > "$site/zz_mx_base_venv.pth"
    echo "torch==$TORCH" > "$venv/constraints.txt"
    "$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" $pkgs
    # nnsight pulls torchvision; a wheel not built for this torch fails at import (torchvision::nms) and none
    # of these tests needs it, so drop it when it does not import.
    if [ -d "$site/torchvision" ] && ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
      "$venv/bin/python" -m pip uninstall -q -y torchvision
    fi
    echo "$stamp" > "$venv/.mx_stamp"
  fi
  "$venv/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH'), torch.__version__; $check" \
    || { echo "integrations_env: $venv does not import ($check)" >&2; exit 1; }
}

what=${1:-all}
case $what in saebench|ctracer|dictlearn|all) ;; *) echo "usage: $0 [saebench|ctracer|dictlearn|all]" >&2; exit 2;; esac
if [ "$what" = all ] || [ "$what" = ctracer ]; then
  overlay ctracer "circuit-tracer==0.5.*" "from circuit_tracer.transcoder import load_transcoder_set"
fi
if [ "$what" = all ] || [ "$what" = dictlearn ]; then
  overlay dictlearn "dictionary-learning==0.1.*" "from dictionary_learning import AutoEncoder"
fi
if [ "$what" = all ] || [ "$what" = saebench ]; then
  overlay saebench "sae-bench==0.6.*" "import sae_bench"
fi
echo "integrations_env: ready ($what) over torch $TORCH"
