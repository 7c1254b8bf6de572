#!/usr/bin/env bash
# Installs what the feature-browser test (tests/eval/test_browser.py) needs: Debian's headless-capable
# `chromium` + `chromium-driver` (apt-get), and the `selenium` Python driver into .venv (if it exists).
# Idempotent: does nothing that is already done. Needs root (or sudo) for apt-get.
#   bash scripts/install_browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "install_browser: apt-get install chromium chromium-driver"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  echo "install_browser: pip install selenium"
  .venv/bin/python -m pip install -q "selenium>=4.10"
fi

echo "install_browser: $(chromium --version 2>/dev/null || echo 'chromium missing') |" \
  "$(chromedriver --version 2>/dev/null | cut -d' ' -f1-2 || echo 'chromedriver missing')"
