#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the CPU kernels.
#
# Builds a separate copy of the CPU extension (MATRYOSHKA_EXT_CUDA=0, MATRYOSHKA_EXT_SANITIZE=1: -O1 -g
# -fsanitize=address,undefined) in a copy of the tree under build/asan/src -- the in-place matryoshka_ext/_C*.so
# that everything else uses is never touched -- then runs the op tests and the fuzz suite against it with the
# ASan runtime preloaded (python itself is not instrumented). Any ASan or UBSan report fails the script.
#
# Toolchain: gcc (the compiler torch's extension builder uses everywhere else here, same ABI and flags) with its
# sanitizer runtimes from Debian's libasan8 / libubsan1 packages, installed below when missing. gcc's runtime is a
# shared library by default, which is what LD_PRELOAD into an uninstrumented python needs.
#
#   bash scripts/sanitize.sh                 build if the sources changed, run the default test selection
#   bash scripts/sanitize.sh -k topk         extra arguments go to pytest (replacing nothing: they are appended)
#   MX_SANITIZE_TESTS="tests/ops/test_select.py" bash scripts/sanitize.sh    run another selection
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VPY=${VPY:-$ROOT/.venv/bin/python}
WORK=${MX_ASAN_DIR:-$ROOT/build/asan}
SRC=$WORK/src

# ---- the sanitizer runtimes (Debian packages; CI runs as root on a fresh machine) ------------------------------
need=()
for lib in libasan.so libubsan.so; do
  f=$(gcc -print-file-name=$lib)
  [ -e "$f" ] || need+=("$lib")
done
if [ ${#need[@]} -gt 0 ]; then
  gccv=$(gcc -dumpversion | cut -d. -f1)
  echo "sanitize: installing gcc-$gccv sanitizer runtimes (missing: ${need[*]})"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libgcc-$gccv-dev" libasan8 libubsan1
fi
ASAN_LIB=$(readlink -f "$(gcc -print-file-name=libasan.so)")
[ -e "$ASAN_LIB" ] || { echo "sanitize: libasan not found" >&2; exit 1; }

# ---- the instrumented copy ---------------------------------------------------------------------------------------
# Sources are copied, not linked: pytest puts the copy's root first on sys.path, so `import matryoshka_ext` in the
# tests resolves to the copy and its instrumented _C.
mkdir -p "$SRC"
rm -rf "$SRC/csrc" "$SRC/tests"
cp setup.py pyproject.toml "$SRC/"
cp -r csrc "$SRC/csrc"
mkdir -p "$SRC/tests"
cp tests/__init__.py tests/conftest.py "$SRC/tests/"
cp -r tests/ops tests/fuzz "$SRC/tests/"
# The package's Python files (not its in-place _C*.so, not caches).
find "$SRC/matryoshka_ext" -name '*.py' -delete 2>/dev/null || true
(cd matryoshka_ext && find . -name '*.py' -not -path '*/__pycache__/*' -print0 | \
  while IFS= read -r -d '' f; do mkdir -p "$SRC/matryoshka_ext/$(dirname "$f")"; cp "$f" "$SRC/matryoshka_ext/$f"; done)
find "$SRC/tests" -name __pycache__ -prune -exec rm -rf {} +

stamp=$( { cat setup.py; find csrc -type f | sort | xargs cat; gcc --version | head -1; \
           "$VPY" -c "import torch; print(torch.__version__)"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$WORK/.stamp" 2>/dev/null)" != "$stamp" ] || ! ls "$SRC"/matryoshka_ext/_C*.so >/dev/null 2>&1; then
  echo "sanitize: building the ASan/UBSan CPU extension in $SRC"
  rm -f "$SRC"/matryoshka_ext/_C*.so
  (cd "$SRC" && CC=gcc CXX=g++ MATRYOSHKA_EXT_CUDA=0 MATRYOSHKA_EXT_NATIVE=0 MATRYOSHKA_EXT_SANITIZE=1 \
     MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VPY" setup.py -q build_ext --inplace --build-temp "$WORK/temp" \
     > "$WORK/build.log" 2>&1) || { tail -40 "$WORK/build.log"; echo "sanitize: build failed" >&2; exit 1; }
  echo "$stamp" > "$WORK/.stamp"
fi
# (not `ldd | grep -q`: under pipefail, grep -q quitting early gives ldd a SIGPIPE and a false failure)
[[ "$(ldd "$SRC"/matryoshka_ext/_C*.so)" == *libasan* ]] || { echo "sanitize: $SRC/_C is not instrumented" >&2; exit 1; }

# ---- the run -----------------------------------------------------------------------------------------------------
# detect_leaks=0: CPython and torch keep allocations alive until exit by design. ASan reports go to files as well
# (children spawned by the fuzz tests inherit the settings and write their own); any report fails the script.
rm -f "$WORK"/asan.* "$WORK"/ubsan.*
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:exitcode=86:detect_odr_violation=0:protect_shadow_gap=0:log_path=$WORK/asan}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$WORK/ubsan}
# libstdc++ is preloaded too: python does not link it, and without it ASan cannot find the real __cxa_throw, so
# the first C++ exception (every invalid-input test) would abort in the interceptor.
STDCXX=$(readlink -f "$(g++ -print-file-name=libstdc++.so.6)")
PRELOAD="$ASAN_LIB $STDCXX"
# Fewer fuzz examples than the normal run (instrumented code is several times slower); still every generator.
export MX_FUZZ_SCALE=${MX_FUZZ_SCALE:-0.5}
# Skipped here: torch.compile (Inductor compiles C++ with the ASan runtime preloaded: slow, and not our kernels)
# and gradcheck (float64 finite differences: minutes under ASan for code the parity tests already cover).
TESTS=${MX_SANITIZE_TESTS:-tests/ops/test_select.py tests/ops/test_parity.py tests/ops/test_invalid.py \
tests/ops/test_fuzz.py tests/fuzz}
log=$WORK/pytest.log
cd "$SRC"
echo "sanitize: running $TESTS under ASan+UBSan ($PRELOAD)"
LD_PRELOAD=$PRELOAD "$VPY" -c "import matryoshka_ext, sys; sys.exit(not matryoshka_ext.__file__.startswith('$SRC'))" \
  || { echo "sanitize: matryoshka_ext does not resolve to the instrumented copy" >&2; exit 1; }
set +e
# shellcheck disable=SC2086
# --capture=sys: pytest captures Python's sys.stdout/err only, so a sanitizer report written by C code to fd 2 (UBSan
# writes there whatever log_path says) reaches the log even when it aborts the process mid-test.
LD_PRELOAD=$PRELOAD "$VPY" -m pytest -q -p no:cacheprovider --capture=sys $TESTS "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
reports=$(ls "$WORK"/asan.* "$WORK"/ubsan.* 2>/dev/null || true)
if [ -n "$reports" ] || grep -qE "ERROR: AddressSanitizer|runtime error:|AddressSanitizer: CHECK" "$log"; then
  for f in $reports; do echo "==== $f"; head -60 "$f"; done
  echo "sanitize: FAILED: sanitizer report(s): ${reports:-see $log}" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "sanitize: FAILED: pytest exited with $rc (86 = ASan abort, 87 = UBSan abort)" >&2
  exit "$rc"
fi
echo "sanitize: OK (no ASan/UBSan reports)"
