#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtualenv in .venv, torch, the package with the given extras, and the
# compiled extension built against that torch.
#   bash scripts/setup.sh [EXTRAS] [PURPOSE]      e.g. bash scripts/setup.sh dev,gemma test
# PURPOSE decides whether the CUDA kernels are compiled (MATRYOSHKA_EXT_CUDA=0|1 overrides both):
#   test (default)  whenever torch has CUDA and nvcc exists, GPU or not: a CUDA compile error must fail CI
#   main            only when a GPU is also visible (the main job on a CPU-only box has no use for them)
# .venv/.mx_stamp records what was built (sources + torch hash, CUDA on/off, extras). A build is reused when
# its sources and torch match, it has the CUDA kernels if they are wanted, and it has the extras asked for;
# so scripts/run.sh after scripts/test.sh reuses the CUDA build, and test.sh after run.sh rebuilds only when
# run.sh's build lacks the CUDA kernels test.sh needs (or its extras), then run.sh reuses that one.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-dev,gemma}
PURPOSE=${2:-test}
PY=${PYTHON:-python3}
case "$PURPOSE" in test|main) ;; *) echo "setup: PURPOSE must be test or main, got '$PURPOSE'" >&2; exit 2;; esac

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip setuptools wheel ninja
"$VPY" -m pip install -q "torch>=2.11"

# Build traps on machines without a GPU: CUDA_HOME unset, no visible arch.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
forced=${MATRYOSHKA_EXT_CUDA:-}
if [ -z "$forced" ]; then
  MATRYOSHKA_EXT_CUDA=0
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] \
     && "$VPY" -c "import torch,sys; sys.exit(torch.version.cuda is None)"; then
    if [ "$PURPOSE" = test ] || "$VPY" -c "import torch,sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null
    then MATRYOSHKA_EXT_CUDA=1; fi
  fi
fi
export MATRYOSHKA_EXT_CUDA
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

src=$( { cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; \
         "$VPY" -c "import torch; print(torch.__version__)"; } | sha256sum | cut -d' ' -f1)
# stamp lines: src=<hash> / cuda=<0|1> / extras=<comma list>
old_src=$(sed -n 's/^src=//p' .venv/.mx_stamp 2>/dev/null || true)
old_cuda=$(sed -n 's/^cuda=//p' .venv/.mx_stamp 2>/dev/null || true)
old_extras=$(sed -n 's/^extras=//p' .venv/.mx_stamp 2>/dev/null || true)
want_extras=$(echo "$EXTRAS" | tr ',' '\n' | sed '/^$/d' | sort -u)
have_extras=$(echo "$old_extras" | tr ',' '\n' | sed '/^$/d' | sort -u)
missing_extras=$(comm -23 <(echo "$want_extras") <(echo "$have_extras") | sed '/^$/d')
reuse=0
if [ "$old_src" = "$src" ] && [ -z "$missing_extras" ]; then
  if [ "$old_cuda" = "$MATRYOSHKA_EXT_CUDA" ] || { [ -z "$forced" ] && [ "$old_cuda" = 1 ]; }; then reuse=1; fi
fi
if [ "$reuse" = 1 ] && ! "$VPY" -c "import matryoshka_ext as mx; mx.has_cuda_kernels()" 2>/dev/null; then
  reuse=0  # the .so does not load against this torch (or is gone): build again
fi
if [ "$reuse" = 0 ]; then
  [ "$old_src" = "$src" ] || have_extras=""  # a new torch or new sources: extras are reinstalled anyway
  all_extras=$( { echo "$want_extras"; echo "$have_extras"; } | sed '/^$/d' | sort -u | paste -sd, -)
  echo "setup: installing matryoshka-ext[$all_extras] and building the extension (CUDA=$MATRYOSHKA_EXT_CUDA)"
  rm -f .venv/.mx_stamp
  "$VPY" -m pip install -q --no-build-isolation -e ".[$all_extras]"
  printf 'src=%s\ncuda=%s\nextras=%s\n' "$src" "$MATRYOSHKA_EXT_CUDA" "$all_extras" > .venv/.mx_stamp
fi
"$VPY" -c "import matryoshka_ext as mx, torch; print('setup: matryoshka_ext ready, torch', torch.__version__, \
'| CUDA kernels compiled:', mx.has_cuda_kernels())"
