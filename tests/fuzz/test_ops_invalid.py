"""Invalid inputs to every op raise ValueError / TypeError naming the argument: never a crash, never silence.

Two runners over the same generated cases (tests/fuzz/cases.py):
- in-process, driven by hypothesis (shrinks a failing case to a small one);
- out-of-process: one child python runs a whole batch, announcing each case before running it, so a segfault or
  abort inside the extension fails this test with the case it died on instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matryoshka_ext

from .budget import examples
from .cases import INVALID_GENERATORS, gen_any_case, gen_nonfinite_valid, judge, run_spec

HERE = Path(__file__).resolve().parent
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(spec: dict) -> None:
    problem = judge(spec, run_spec(spec, seed=0))
    assert problem is None, f"{spec['why']}: {problem}\nspec: {json.dumps(spec)}"


@pytest.mark.parametrize("gen", INVALID_GENERATORS, ids=lambda g: g.__name__)
def test_invalid_raises_named_error(gen):
    @settings(max_examples=examples(80), **SETTINGS)
    @given(st.randoms(use_true_random=False))
    def run(rng):
        _check(gen(rng))

    run()


@settings(max_examples=examples(100), **SETTINGS)
@given(st.randoms(use_true_random=False))
def test_nonfinite_valid_inputs_return_wellformed(rng):
    _check(gen_nonfinite_valid(rng))


def _run_child(specs: list[dict], seed: int, tmp_path: Path, **extra_env: str) -> tuple[int, list[dict], str]:
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
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, events, proc.stderr


def _child_failure(specs: list[dict], rc: int, events: list[dict], stderr: str) -> str | None:
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


def test_invalid_cases_in_a_subprocess(tmp_path):
    """A batch of generated cases (4 in 5 invalid) in one child process: it must exit 0, and every case must
    raise the named error (or, for the non-finite valid ones, return a well-formed result)."""
    seed = int(os.environ.get("MX_TEST_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    specs = [gen_any_case(rng) for _ in range(examples(600))]
    problem = _child_failure(specs, *_run_child(specs, seed, tmp_path))
    assert problem is None, f"(replay with MX_TEST_SEED={seed}) {problem}"


def test_child_crash_names_the_case(tmp_path):
    """The crash detection itself: a case that kills the child by SIGSEGV fails the run and is named."""
    ok = {"op": "mx.topk", "args": [{"t": {"shape": [2, 3]}}, 1], "expect": ["returns", "select"], "why": "ok"}
    crash = {"op": "debug.segfault", "args": [], "expect": ["returns", None], "why": "segfault"}
    specs = [ok, crash, ok]
    # Under scripts/sanitize.sh ASan would catch the SEGV itself (and file a report): let the signal through.
    asan = os.environ.get("ASAN_OPTIONS")
    extra = {"ASAN_OPTIONS": f"{asan}:handle_segv=0"} if asan else {}
    rc, events, stderr = _run_child(specs, 0, tmp_path, **extra)
    assert rc == -signal.SIGSEGV
    problem = _child_failure(specs, rc, events, stderr)
    assert problem is not None and "signal SIGSEGV" in problem
    assert "in case 1:" in problem and "debug.segfault" in problem
    # and a clean batch passes
    assert _child_failure([ok, ok], *_run_child([ok, ok], 0, tmp_path)) is None
