#!/usr/bin/env bash
# The test command: set up everything the suite needs (package + extension, Chromium for the feature-browser test,
# the peer libraries in their own overlay envs), lint, then the whole pytest suite. A missing peer is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,gemma,integrations
bash scripts/install_browser.sh
bash scripts/integrations_env.sh all
.venv/bin/ruff check matryoshka_ext tests benchmarks scripts
bash scripts/sanitize.sh  # the CPU kernels under ASan + UBSan (a separate build under build/asan)
export MX_REQUIRE_PEERS=1 WANDB_MODE=offline
exec .venv/bin/python -m pytest -q "$@"
