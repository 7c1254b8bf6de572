"""Running peer libraries for the integration tests.

sae-lens lives in the project venv; circuit-tracer, dictionary-learning and sae-bench pin versions that clash with
it, so each lives in an overlay venv (``.venv-ctracer``, ``.venv-dictlearn``, ``.venv-saebench``, built by
``scripts/integrations_env.sh``) and the tests drive a small script there (``tests/integrations/peers/``),
exchanging tensors through safetensors files. A missing peer skips its tests, unless ``MX_REQUIRE_PEERS=1``
(CI) turns that into a failure, so CI always runs them against a real install.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPTS = Path(__file__).resolve().parent / "peers"
REQUIRE = os.environ.get("MX_REQUIRE_PEERS", "") not in ("", "0")


def _missing(what: str, fix: str) -> None:
    msg = f"{what} is not installed ({fix})"
    if REQUIRE:
        pytest.fail(f"MX_REQUIRE_PEERS is set but {msg}")
    pytest.skip(msg)


def import_peer(module: str, pip_name: str) -> Any:
    """Import a peer installed in the project venv, or skip (fail under MX_REQUIRE_PEERS)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        _missing(pip_name, f"pip install {pip_name}")


def peer_python(env: str) -> Path:
    """The python of overlay venv ``.venv-<env>``; skips (fails under MX_REQUIRE_PEERS) when it is missing."""
    py = REPO / f".venv-{env}" / "bin" / "python"
    if not py.exists():
        _missing(f".venv-{env}", f"bash scripts/integrations_env.sh {env}")
    return py


def run_peer(env: str, script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``peers/<script>`` with the overlay venv's python; returns the JSON object it prints last."""
    py = peer_python(env)
    env_vars = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [str(py), str(PEER_SCRIPTS / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env_vars, cwd=str(REPO),
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(
            f"{script} in .venv-{env} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        pytest.fail(f"{script} printed no JSON result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])
