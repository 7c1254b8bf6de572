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
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .budget import examples
from .cases import INVALID_GENERATORS, gen_any_case, gen_nonfinite_valid, judge, run_spec
from .runner import child_failure, run_child

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


def test_invalid_cases_in_a_subprocess(tmp_path):
    """A batch of generated cases (4 in 5 invalid) in one child process: it must exit 0, and every case must
    raise the named error (or, for the non-finite valid ones, return a well-formed result)."""
    seed = int(os.environ.get("MX_TEST_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    specs = [gen_any_case(rng) for _ in range(examples(600))]
    problem = child_failure(specs, *run_child(specs, seed, tmp_path))
    assert problem is None, f"(replay with MX_TEST_SEED={seed}) {problem}"


def test_child_crash_names_the_case(tmp_path):
    """The crash detection itself: a case that kills the child by SIGSEGV fails the run and is named."""
    ok = {"op": "mx.topk", "args": [{"t": {"shape": [2, 3]}}, 1], "expect": ["returns", "select"], "why": "ok"}
    crash = {"op": "debug.segfault", "args": [], "expect": ["returns", None], "why": "segfault"}
    specs = [ok, crash, ok]
    # Under scripts/sanitize.sh ASan would catch the SEGV itself (and file a report): let the signal through.
    asan = os.environ.get("ASAN_OPTIONS")
    extra = {"ASAN_OPTIONS": f"{asan}:handle_segv=0"} if asan else {}
    rc, events, stderr = run_child(specs, 0, tmp_path, **extra)
    assert rc == -signal.SIGSEGV
    problem = child_failure(specs, rc, events, stderr)
    assert problem is not None and "signal SIGSEGV" in problem
    assert "in case 1:" in problem and "debug.segfault" in problem
    # and a clean batch passes
    assert child_failure([ok, ok], *run_child([ok, ok], 0, tmp_path)) is None
