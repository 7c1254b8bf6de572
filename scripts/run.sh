#!/usr/bin/env bash
# The main job on the offline default: set up, train a Matryoshka transcoder on Gemma 3 270M (Debian text corpus,
# no hub), evaluate every prefix (fidelity, sparsity, spliced LM loss) and write activation samples + a feature
# browser. Extra arguments go to `matryoshka-ext train` (e.g. --total_tokens 200000).
# Ends with a stage-by-stage timing table, also written to RUN/timing.json (docs/MAIN_JOB.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ms() { date +%s%3N; }
secs() { local d=$(( $(ms) - $1 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }  # seconds since $1 (ms)
t0=$(ms)
# CUDA kernels only when a GPU is visible (scripts/test.sh still compiles them whenever nvcc exists)
bash scripts/setup.sh gemma main
setup_s=$(secs "$t0")
RUN=${RUN_DIR:-runs/offline-default}
if [ -z "${RUN_DIR:-}" ] && [ -e "$RUN" ]; then  # a fresh run folder, the one the trainer would pick (-2, -3...)
  n=2; while [ -e "$RUN-$n" ]; do n=$((n + 1)); done; RUN="$RUN-$n"
fi
export WANDB_MODE=${WANDB_MODE:-offline}
# stages go to a file beside the run until it exists (creating RUN first would make the trainer pick RUN-2)
mkdir -p "$(dirname "$RUN")"
export MATRYOSHKA_EXT_TIMING="$(dirname "$RUN")/.timing-$$.json"
rm -f "$MATRYOSHKA_EXT_TIMING"
PY=.venv/bin/python
"$PY" -m matryoshka_ext._timing "$MATRYOSHKA_EXT_TIMING" --add set-up "$setup_s"
step() {  # step NAME CMD...: run CMD with its stages recorded under NAME, then its wall time
  local name=$1 s; shift
  s=$(ms)
  MATRYOSHKA_EXT_TIMING_PROCESS=$name "$@"
  "$PY" -m matryoshka_ext._timing "$MATRYOSHKA_EXT_TIMING" --add "$name" "$(secs "$s")"
}
step train .venv/bin/matryoshka-ext train --out_dir "$(dirname "$RUN")" --run_name "$(basename "$RUN")" "$@"
step eval .venv/bin/matryoshka-ext eval "$RUN" --out "$RUN/eval" --benchmark-results benchmarks/quality/results/full.json
step samples .venv/bin/matryoshka-ext samples "$RUN" --n-tokens 32768 --out "$RUN/samples"
mv "$MATRYOSHKA_EXT_TIMING" "$RUN/timing.json"
echo
"$PY" -m matryoshka_ext._timing "$RUN/timing.json" --summary | tee "$RUN/timing.txt"
echo "report: $RUN/eval/eval.md   plots: $RUN/eval/*.png   feature browser: $RUN/samples/*.html"
echo "timing: $RUN/timing.json"
