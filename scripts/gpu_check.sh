#!/usr/bin/env bash
# The GPU check, run ON the GPU machine from the repository root:
#   OUT=/some/dir bash scripts/gpu_check.sh
# Builds the extension with its CUDA kernels for the visible GPU, runs the CUDA tests (tests/cuda), the GPU
# op benchmarks (benchmarks/gpu), compute-sanitizer memcheck + racecheck on small inputs, then the whole-step
# benchmarks and profile at Gemma-2-2B shapes (benchmarks/test_train_step.py, benchmarks/profile_step.py). Each stage's full
# output goes to $OUT/gpu_check.log (stdout shows only its tail); a failed stage does not stop later ones, and
# the exit status is non-zero if any stage failed. Stage time limits shrink to fit GPU_CHECK_BUDGET (seconds,
# default 480); GPU_CHECK_SKIP_BUILD=1 reuses an extension already built in the tree (a rerun on a warm machine).
# Outputs: gpu_check.log, junit_cuda.xml, gpu_bench.json, gpu_bench.md, bench-train-step.json, profile-cuda.json,
# summary.txt. A stage the budget cannot fit is skipped and counts as a failure: raise GPU_CHECK_BUDGET (up to
# what the machine's command limit allows) to run everything, or split it over two calls on a warm machine:
#   GPU_CHECK_STAGES="build,bad input raises,cuda tests,benchmarks,memcheck,racecheck" bash scripts/gpu_check.sh
#   GPU_CHECK_SKIP_BUILD=1 GPU_CHECK_STAGES="build,step benchmarks,step profile" bash scripts/gpu_check.sh
# (stage names as the log prints them; "build" with GPU_CHECK_SKIP_BUILD=1 only checks the built extension).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET:-480}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-tree package, however it was built
export PYTHONDONTWRITEBYTECODE=1
export MX_TEST_SEED=${MX_TEST_SEED:-1234}  # fixed seed: a failure can be replayed
T0=$SECONDS
SUMMARY=()
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

# run_stage NAME LIMIT_S COMMAND...: the limit is cut to what is left of the budget (minus a reserve).
run_stage() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ ",$GPU_CHECK_STAGES," != *",$name,"* ]]; then
    say "=== $name: not selected (GPU_CHECK_STAGES)"
    SUMMARY+=("$name: not selected")
    return 0
  fi
  local left=$((BUDGET - (SECONDS - T0) - 15))
  if ((left < 20)); then
    say "=== $name: SKIPPED (time budget spent)"
    SUMMARY+=("$name: skipped (budget)")
    FAILED=1
    return 1
  fi
  ((limit > left)) && limit=$left
  say "=== $name (limit ${limit}s, t=$((SECONDS - T0))s)"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n "${TAIL_LINES:-8}"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    SUMMARY+=("$name: ok (${took}s)")
  else
    ((rc == 124 || rc == 137)) && SUMMARY+=("$name: TIMEOUT after ${took}s") || SUMMARY+=("$name: FAILED rc=$rc (${took}s)")
    FAILED=1
  fi
  say "=== $name: rc=$rc in ${took}s"
  return "$rc"
}

# ---- 1. environment ----------------------------------------------------------------------------------------
say "=== environment"
{
  nvidia-smi 2>&1 || echo "nvidia-smi failed"
  echo "python: $PY"
  "$PY" - <<'EOF'
import sys, torch
import torch.utils.cpp_extension as ce
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE",
      "| capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None)
print("CUDA_HOME:", ce.CUDA_HOME, "| ninja:", ce.is_ninja_available())
EOF
  (command -v nvcc && nvcc --version | tail -n 2) || echo "nvcc not on PATH"
} >>"$LOG" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOG"
grep -E "^python|^device|^CUDA_HOME" "$LOG" | tail -n 3

# ---- 2. build ----------------------------------------------------------------------------------------------
build() {
  if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
    local cap
    cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
    export TORCH_CUDA_ARCH_LIST="$cap" MATRYOSHKA_EXT_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
    echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
    # -v: the compiler and linker output reaches the log (the throw diagnosis greps it for eh_frame messages)
    if ! "$PY" -m pip install -v --no-deps --no-build-isolation -e .; then
      echo "pip install -e . failed; building in place instead (setup.py build_ext --inplace)"
      "$PY" setup.py -q build_ext --inplace || return 1
    fi
  fi
  # An extension without an unwind search table turns every C++ exception into a crash (see the script).
  "$PY" scripts/unwind_table.py "$("$PY" -c "import glob, os, matryoshka_ext as m
print(glob.glob(os.path.join(os.path.dirname(m.__file__), '_C*.so'))[0])")" || echo "WARNING: see above"
  "$PY" -c "import matryoshka_ext as mx, torch
assert mx.has_cuda_kernels(), 'built without the CUDA kernels'
print('built: CUDA kernels registered, torch', torch.__version__, 'on',
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
}
export -f build
export PY
run_stage build 330 bash -c build
BUILD_OK=$?

# ---- 2b. a bad input must raise, not crash (it crashed on the first H200 box: see scripts/diagnose_throw.sh) --
if ((BUILD_OK == 0)); then
  if ! run_stage "bad input raises" 60 "$PY" -c "import torch, matryoshka_ext as mx
try:
    mx.topk(torch.randn(4, 10), 0)
except ValueError as e:
    print('raises:', e)
else:
    raise SystemExit('mx.topk(k=0) did not raise')"; then
    GPU_CHECK_STAGES= TAIL_LINES=40 run_stage "diagnose throw" 240 env PYTHON="$PY" BUILD_LOG="$LOG" bash scripts/diagnose_throw.sh
  fi
fi

# ---- 3. CUDA tests -----------------------------------------------------------------------------------------
if ((BUILD_OK == 0)); then
  TAIL_LINES=20 run_stage "cuda tests" 210 "$PY" -m pytest -q -rfE tests/cuda --maxfail=10 --tb=short -p no:cacheprovider \
    --junitxml="$OUT/junit_cuda.xml"

  # ---- 4. benchmarks (before the sanitizer, so a slow sanitizer cannot eat their time) --------------------
  run_stage benchmarks 200 "$PY" -m pytest -q -rfE benchmarks/gpu -p no:cacheprovider \
    --benchmark-json="$OUT/gpu_bench.json" --benchmark-columns=median,min,max,rounds --benchmark-sort=name
  if [ -s "$OUT/gpu_bench.json" ]; then
    "$PY" benchmarks/gpu/report.py "$OUT/gpu_bench.json" >"$OUT/gpu_bench.md" 2>>"$LOG"
    cat "$OUT/gpu_bench.md" >>"$LOG"
    sed -n '/| group | goal |/,$p' "$OUT/gpu_bench.md"
  fi

  # ---- 5. compute-sanitizer ---------------------------------------------------------------------------------
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -z "$SAN" ]; then
    say "=== compute-sanitizer not found: memcheck / racecheck skipped"
    SUMMARY+=("sanitizer: skipped (compute-sanitizer not found)")
  else
    say "compute-sanitizer: $SAN"
    # No caching allocator: every tensor is its own allocation, so an out-of-bounds access is caught.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_stage memcheck 150 "$SAN" --tool memcheck --error-exitcode 1 \
      --report-api-errors no --print-limit 30 "$PY" tests/cuda/sanitize_small.py
    run_stage racecheck 90 "$SAN" --tool racecheck --error-exitcode 1 --report-api-errors no --print-limit 30 \
      "$PY" tests/cuda/sanitize_small.py --race
  fi

  # ---- 6. whole training steps at Gemma-2-2B shapes (issue 6): ours, no-AuxK, dense, floor, installed peers ----
  # Last, so the kernel checks above get the time first. Copy bench-train-step.json to
  # benchmarks/results/gpu-<card>.json and profile-cuda.json next to it, then `python -m benchmarks.results`.
  BENCH_DEVICE=cuda BENCH_CASE_S=${BENCH_CASE_S:-1} run_stage "step benchmarks" 200 "$PY" -m pytest -q -rfE \
    benchmarks/test_train_step.py -p no:cacheprovider --benchmark-json="$OUT/bench-train-step.json" \
    --benchmark-columns=median,rounds --benchmark-sort=name
  run_stage "step profile" 90 "$PY" -m benchmarks.profile_step --device cuda --out "$OUT/profile-cuda.json"
else
  SUMMARY+=("cuda tests / benchmarks / sanitizer / step benchmarks: not run (build failed)")
fi

# ---- summary -----------------------------------------------------------------------------------------------
{
  echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1), total $((SECONDS - T0))s)"
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
  [ -f "$OUT/junit_cuda.xml" ] && grep -o '<testsuite [^>]*' "$OUT/junit_cuda.xml" | grep -oE '(tests|failures|errors|skipped)="[0-9]+"' | tr '\n' ' ' && echo
  if ((FAILED)); then echo "GPU CHECK: FAILED"; else echo "GPU CHECK: PASSED"; fi
} | tee -a "$LOG" | tee "$OUT/summary.txt"
exit "$FAILED"
