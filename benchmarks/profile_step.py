"""torch.profiler tables (top ops by self time) of whole training steps, for RESULTS.md's "where the time goes".

    python -m benchmarks.profile_step --device cpu --out benchmarks/results/profile-cpu.json
    python -m benchmarks.profile_step --device cuda --out "$OUT/profile-cuda.json"

Profiles ours at the shapes the goals name (on CUDA also the floor and any installed peer), one process per
case, after one warm-up step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

from .client import Worker
from .steps import Case

PEER_MODULES = {"sae_lens": "sae_lens", "dictionary_learning": "dictionary_learning"}


def goal_cases(device: str) -> list[Case]:
    if device == "cuda":
        base = dict(device="cuda", n=4096, d=2304, f=65536, k=64, groups=5, dtype="bfloat16")
    else:
        base = dict(device="cpu", n=4096, d=640, f=8192, k=32, groups=4)
    impls = ["ours", "floor"] if device == "cuda" else ["ours"]
    if device == "cuda":  # on CPU the peers' dense steps are well known (dense GEMMs + torch.topk): skip their minutes
        impls += [i for i, m in PEER_MODULES.items() if importlib.util.find_spec(m) is not None]
    return [Case(impl=i, **base) for i in impls]


def profile(case: Case, steps: int) -> dict:
    with Worker(case) as w:
        w.step()
        table = w.profile(steps)
    return {"case": case.to_dict(), "steps": steps, "table": table}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="profiled steps (default: 2 on CPU, 5 on CUDA)")
    ap.add_argument("--impl", action="append", help="profile only these implementations")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    steps = args.steps or (5 if args.device == "cuda" else 2)
    cases = [c for c in goal_cases(args.device) if not args.impl or c.impl in args.impl]
    out = [profile(c, steps) for c in cases]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"profile_step: {len(out)} profiles -> {args.out}")


if __name__ == "__main__":
    main()
