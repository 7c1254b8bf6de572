#!/usr/bin/env bash
# Why does a bad-input call crash instead of raising? Run ON the machine where it happens, from the repo root:
#   bash scripts/diagnose_throw.sh            (uses $PYTHON or python)
# Seen on the H200 box (Ubuntu, system Python 3.12, gcc 13.3, torch 2.11): every C++ exception thrown by our
# extension killed the process with SIGSEGV, even `mx.topk(torch.randn(4, 10), 0)` on the CPU, while a
# load_inline extension throwing the same TORCH_CHECK raised fine. The difference between the two builds is the
# flags setuptools takes from the distro Python's sysconfig (CFLAGS, LDSHARED: -Bsymbolic-functions, LTO, ...)
# and the CUDA objects. This script prints the evidence and probes builds that differ in exactly those:
#   installed   the extension as built (gdb backtrace of the crash when gdb exists)
#   cpu-setup   CPU kernels only, setuptools with the distro flags
#   cpu-plain   CPU kernels only, setuptools with LDSHARED="g++ -shared" and empty CFLAGS/LDFLAGS overrides
#   cpu-jit     CPU kernels only, torch.utils.cpp_extension.load (load_inline's flags, no sysconfig)
# and whether each .so kept its .eh_frame_hdr search table (scripts/unwind_table.py; BUILD_LOG=the build's
# output is searched for the linker's "no .eh_frame_hdr table will be created").
# Each probe line ends in RAISES (good) or the signal that killed it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$(command -v python || command -v python3)}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute (the builds cd elsewhere), symlinks kept
WORK=${DIAG_DIR:-/tmp/mx_throw_diag}
rm -rf "$WORK" && mkdir -p "$WORK"

PROBE='
import sys, torch
try:
    torch.ops.matryoshka_ext.topk_select(torch.randn(4, 10), 0)
except (ValueError, RuntimeError) as e:
    print("RAISES:", type(e).__name__, str(e).splitlines()[0][:80]); sys.exit(0)
print("DID NOT RAISE"); sys.exit(3)'

probe() {  # probe NAME [env...] -- python code prefix that loads the extension
  local name=$1 pre=$2 rc
  "$PY" -c "$pre
$PROBE" >"$WORK/$name.out" 2>&1
  rc=$?
  if ((rc == 0)); then echo "$name: $(tail -n 1 "$WORK/$name.out")"
  elif ((rc > 128)); then echo "$name: KILLED by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null))"
  else echo "$name: rc=$rc: $(tail -n 3 "$WORK/$name.out" | tr '\n' ' ')"; fi
}

echo "=== evidence"
"$PY" - <<'PYEOF'
import sys, sysconfig, torch
print("python", sys.version.split()[0], sys.executable, "| torch", torch.__version__)
for k in ("CC", "CXX", "CFLAGS", "CCSHARED", "LDSHARED", "LDFLAGS", "OPT", "BASECFLAGS", "CONFIGURE_CFLAGS"):
    print(f"  sysconfig {k} = {sysconfig.get_config_var(k)!r}")
PYEOF
(gcc --version | head -n 1; ld --version | head -n 1; ldd --version | head -n 1) 2>&1 | sed 's/^/  /'
echo "  cpu flags: $(grep -o -w -E 'user_shstk|shstk|ibt' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "  GLIBC_TUNABLES=${GLIBC_TUNABLES:-}"
SO=$(ls matryoshka_ext/_C*.so 2>/dev/null | head -n 1)
if [ -n "$SO" ]; then
  echo "  $SO: $(readelf -n "$SO" 2>/dev/null | grep -i -E 'x86 feature|properties' | tr -s ' ' | tr '\n' ' ')"
  readelf -S "$SO" | grep -E 'eh_frame|gcc_except' | awk '{print "  section", $2}'
  echo "  $("$PY" scripts/unwind_table.py "$SO")"
fi
if [ -n "${BUILD_LOG:-}" ] && [ -f "$BUILD_LOG" ]; then  # the linker says when it dropped the search table
  echo "  build log eh_frame lines: $(grep -c -i 'eh_frame' "$BUILD_LOG")"
  grep -i 'eh_frame' "$BUILD_LOG" | head -n 5 | sed 's/^/    /'
fi

echo "=== probes"
probe installed "import matryoshka_ext"
if [ -n "$SO" ] && command -v gdb >/dev/null; then
  gdb -q -batch -ex run -ex "bt 25" --args "$PY" -c "import matryoshka_ext
$PROBE" >"$WORK/gdb.txt" 2>&1
  grep -E '^#|signal' "$WORK/gdb.txt" | head -n 30 | sed 's/^/  gdb: /'
fi

copy_tree() {  # a copy of the sources without any build outputs
  mkdir -p "$WORK/$1"
  tar --exclude=./build --exclude='./.venv*' --exclude='*.so' --exclude=./.git -cf - . | tar -xf - -C "$WORK/$1"
}
export MATRYOSHKA_EXT_CUDA=0 MAX_JOBS=${MAX_JOBS:-16}

copy_tree cpu-setup
(cd "$WORK/cpu-setup" && "$PY" setup.py -q build_ext --inplace >"$WORK/cpu-setup.build" 2>&1) &&
  { echo "cpu-setup: $("$PY" scripts/unwind_table.py "$WORK"/cpu-setup/matryoshka_ext/_C*.so)"; true; } &&
  probe cpu-setup "import sys; sys.path.insert(0, '$WORK/cpu-setup'); import matryoshka_ext" ||
  echo "cpu-setup: build failed ($(tail -n 2 "$WORK/cpu-setup.build" | tr '\n' ' '))"

copy_tree cpu-plain
(cd "$WORK/cpu-plain" && CFLAGS= CPPFLAGS= LDFLAGS= LDSHARED="g++ -shared" CC=gcc CXX=g++ \
  "$PY" setup.py -q build_ext --inplace >"$WORK/cpu-plain.build" 2>&1) &&
  { echo "cpu-plain: $("$PY" scripts/unwind_table.py "$WORK"/cpu-plain/matryoshka_ext/_C*.so)"; true; } &&
  probe cpu-plain "import sys; sys.path.insert(0, '$WORK/cpu-plain'); import matryoshka_ext" ||
  echo "cpu-plain: build failed ($(tail -n 2 "$WORK/cpu-plain.build" | tr '\n' ' '))"

probe cpu-jit "import glob, torch.utils.cpp_extension as ce
ce.load(name='mx_diag_jit', sources=sorted(glob.glob('csrc/*.cpp') + glob.glob('csrc/cpu/*.cpp')),
        extra_include_paths=['csrc'], extra_cflags=['-O3', '-fopenmp'], extra_ldflags=['-fopenmp'],
        build_directory='$WORK', is_python_module=False, verbose=False)"
echo "=== done (details in $WORK)"
