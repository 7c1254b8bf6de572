"""Turn a pytest-benchmark JSON into a markdown table: median per case and the ratio to the group's fastest."""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
        threads = torch.get_num_threads()
        return f"{platform.processor() or platform.machine()}, {threads} threads (torch {torch.__version__})"
    except ImportError:  # pragma: no cover
        return platform.platform()


def table(path: str) -> str:
    data = json.load(open(path))
    groups: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for b in data["benchmarks"]:
        name = b["param"] if b.get("param") else b["name"]
        groups[b["group"] or b["name"]].append((name, b["stats"]["median"]))
    lines = [f"Machine: {data.get('machine_info', {}).get('cpu', {}).get('brand_raw', machine())}", ""]
    lines += ["| group | case | median (ms) | x slower than fastest |", "|---|---|---|---|"]
    for group, rows in groups.items():
        best = min(t for _, t in rows)
        for name, t in sorted(rows, key=lambda r: r[1]):
            lines.append(f"| {group} | {name} | {t * 1e3:.1f} | {t / best:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
