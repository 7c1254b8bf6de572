#!/usr/bin/env bash
# The CPU benchmark suite (issue 6): ops and whole training steps against the dense way and the peer libraries,
# all in one run, then benchmarks/RESULTS.md and the step-time plot generated from the JSON it wrote.
#   bash scripts/bench.sh            # BENCH_FULL=1 adds every implementation at F=32768 (about 4 minutes more)
# Knobs: BENCH_CASE_S (timed seconds per case), BENCH_THREADS (torch CPU threads), BENCH_DENSE_MAX (largest F of
# the dense scaling points). The GPU suite is scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bench_env.sh
PY=.venv-bench/bin/python
RES=benchmarks/results
mkdir -p "$RES"
export BENCH_DEVICE=cpu PYTHONUNBUFFERED=1
# pytest-benchmark's JSON records the commit; its cache dir and .benchmarks/ stay out of the tree.
pt() { "$PY" -m pytest -p no:cacheprovider -q --benchmark-sort=name "$@"; }

pt benchmarks/test_ops_cpu.py --benchmark-json="$RES/ops-cpu.json"
pt benchmarks/test_train_step.py --benchmark-json="$RES/cpu.json"
"$PY" -m benchmarks.profile_step --device cpu --out "$RES/profile-cpu.json"
"$PY" -m benchmarks.results
