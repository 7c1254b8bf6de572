#!/usr/bin/env bash
# The test command: set up (installs everything it needs), lint, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,gemma
.venv/bin/ruff check matryoshka_ext tests benchmarks scripts
exec .venv/bin/python -m pytest -q "$@"
