"""How many examples each fuzz test draws: the numbers in the tests times MX_FUZZ_SCALE (default 1).

scripts/sanitize.sh lowers the scale (instrumented kernels are slower); a long local hunt can raise it.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("MX_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    """n scaled, at least 5."""
    return max(5, round(n * SCALE))
