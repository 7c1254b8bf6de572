"""Runs a batch of fuzz specs in a child python (tests/fuzz/child.py) and judges the result, crash included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import matryoshka_ext

from .cases import judge

HERE = Path(__file__).resolve().parent


def run_child(specs: list[dict], seed: int, tmp_path: Path, **extra_env: str) -> tuple[int, list[dict], str]:
    """(exit status, JSON events, stderr) of child.py over `specs` (case i is built with seed + i)."""
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"spec": s, "seed": seed + i} for i, s in enumerate(specs)]))
    env = dict(os.environ)
    # The child imports the very package this process uses (the in-place build, or scripts/sanitize.sh's copy).
    pkg_root = str(Path(matryoshka_ext.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra_env)
    proc = subprocess.run([sys.executable, str(HERE / "child.py"), str(path)], capture_output=True, text=True,
                          env=env, timeout=600)
    events = []
    for line in proc.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # anything else a library printed
            continue
        if isinstance(event, dict):
            events.append(event)
    return proc.returncode, events, proc.stderr


def child_failure(specs: list[dict], rc: int, events: list[dict], stderr: str) -> str | None:
    """Why a child run failed (crash, with the case it was on; or cases with a wrong outcome), None if it passed."""
    outcomes = {e["id"]: e for e in events if "id" in e}
    if rc != 0 or not any("done" in e for e in events):
        started = [e["start"] for e in events if "start" in e]
        crashed = started[-1] if started else None
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        case = json.dumps(specs[crashed]) if crashed is not None and crashed not in outcomes else "none running"
        return f"child died ({how}) in case {crashed}: {case}\nstderr tail:\n{stderr[-3000:]}"
    failures = []
    for i, spec in enumerate(specs):
        problem = judge(spec, outcomes[i])
        if problem:
            failures.append(f"case {i} {spec['why']}: {problem}\n  spec: {json.dumps(spec)}")
    if failures:
        return f"{len(failures)} of {len(specs)} cases failed:\n" + "\n".join(failures[:20])
    return None
