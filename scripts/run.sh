#!/usr/bin/env bash
# The main job on the offline default: set up, train a Matryoshka transcoder on Gemma 3 270M (Debian text corpus,
# no hub), evaluate every prefix (fidelity, sparsity, spliced LM loss) and write activation samples + a feature
# browser. Extra arguments go to `matryoshka-ext train` (e.g. --total_tokens 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh gemma
RUN=${RUN_DIR:-runs/offline-default}
export WANDB_MODE=${WANDB_MODE:-offline}
.venv/bin/matryoshka-ext train --out_dir "$(dirname "$RUN")" --run_name "$(basename "$RUN")" "$@"
.venv/bin/matryoshka-ext eval "$RUN" --out "$RUN/eval"
.venv/bin/matryoshka-ext samples "$RUN" --n-tokens 32768 --out "$RUN/samples"
echo "report: $RUN/eval/eval.md   plots: $RUN/eval/*.png   feature browser: $RUN/samples/*.html"
