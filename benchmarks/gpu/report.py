"""Markdown table of a GPU benchmark JSON (pytest-benchmark): medians per group, same-run ratios, the goals.

python benchmarks/gpu/report.py gpu_bench.json > gpu_bench.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

# kind -> (our case, [(other case, goal text, check(ratio other/ours), applies at every F)]). The issue's
# speed goals hold at F=65536, except m=5 vs m=1 which holds everywhere; other shapes are for information.
GOALS = {
    "nested": (
        "mx m=5",
        [
            ("mx m=1", "m=5 / m=1 <= 1.2", lambda r: 1 / r <= 1.2, True),
            ("dense reference m=5", "dense / m=5 >= 10", lambda r: r >= 10, False),
        ],
    ),
    "topk": ("mx.topk", [("torch.topk", "torch / mx >= 4", lambda r: r >= 4, False)]),
    "batch_topk": ("mx.batch_topk", [("torch.topk flat", "torch / mx >= 4", lambda r: r >= 4, False)]),
    "encoder_bwd": (
        "mx sparse backward",
        [("dense autograd backward", "dense / mx >= 5", lambda r: r >= 5, False)],
    ),
}


def table(path: str) -> str:
    data = json.load(open(path))
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    kinds: dict[str, str] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        case = info.get("case", b["name"])
        groups[b["group"] or b["name"]][case] = b["stats"]["median"]
        kinds[b["group"] or b["name"]] = info.get("kind", "")
    device = data.get("machine_info", {}).get("gpu", "")
    lines = [
        f"GPU benchmarks {device}".rstrip(),
        "",
        "| group | case | median (ms) | x of ours |",
        "|---|---|---|---|",
    ]
    goal_lines = ["", "| group | goal | ratio | met |", "|---|---|---|---|"]
    for group, cases in groups.items():
        ours_name, goals = GOALS.get(kinds[group], (None, []))
        ours = cases.get(ours_name)
        for case, t in cases.items():
            ratio = f"{t / ours:.2f}" if ours else ""
            lines.append(f"| {group} | {case} | {t * 1e3:.3f} | {ratio} |")
        for other, text, check, everywhere in goals:
            if ours and other in cases:
                r = cases[other] / ours
                shown = f"{1 / r:.2f}" if other == "mx m=1" else f"{r:.1f}"
                applies = everywhere or "F=65536" in group
                met = ("yes" if check(r) else "NO") if applies else "(info)"
                goal_lines.append(f"| {group} | {text} | {shown} | {met} |")
    return "\n".join(lines + goal_lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(sys.argv[1]))
