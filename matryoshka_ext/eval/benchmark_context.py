"""This run against the quality benchmark (benchmarks/quality): a markdown section for eval.md that puts a run's
final-prefix figures next to every row of a benchmark results document at the same layer and k.

The benchmark trains each peer with its own code on the same activation cache and scores it with the same
harness on the same held-out tokens as the offline default run, so for that run the numbers compare directly;
for any other run (another layer, model or held-out set) the section says that it does not.
"""

from __future__ import annotations

import json
import statistics
from typing import Any


def _mean_sd(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def _pct(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    return f"{statistics.mean(vals):.1%}" if vals else "—"


def benchmark_rows(doc: dict[str, Any], layer: int, k: int, budget: str = "tokens") -> dict[str, list[dict]]:
    """Scored transcoder-mode entries of a results document at (layer, k, budget), by row name."""
    rows: dict[str, list[dict]] = {}
    for e in doc.get("runs", []):
        if (e.get("layer"), e.get("k"), e.get("budget"), e.get("mode")) != (layer, k, budget, "transcoder"):
            continue
        if "eval" in e:
            rows.setdefault(e["row"], []).append(e)
    return rows


def benchmark_section(result: dict[str, Any], path: str, k: int | None, budget: str = "tokens") -> str:
    """Markdown: this run's final prefix next to each benchmark row (mean ± sd over its seeds) at the run's layer
    and ``k`` (None: unknown, nothing compared). ``result`` is evaluate()'s output for one transcoder; ``path`` a
    benchmarks/quality results JSON."""
    with open(path) as fh:
        doc = json.load(fh)
    t = result["transcoders"][0]
    layer = result["sites"]["layer"]
    final = t["prefixes"][-1]
    cache = doc.get("meta", {}).get("caches", {}).get(str(layer), {})
    bench_tokens = cache.get("heldout_tokens")
    lines = [
        "## Against the quality benchmark",
        "",
        f"Rows of `{path}` (layer {layer}, k {k}, equal tokens): each trained by its own library on the benchmark's "
        f"cache and scored by one harness on {bench_tokens or '?'} held-out tokens (`{cache.get('heldout', '?')}`). "
        "The benchmark's spliced ΔCE is on its first held-out predictions, this run's on its own, so compare ΔCE "
        "loosely.",
        "",
    ]
    if bench_tokens is not None and bench_tokens != t["n_tokens"]:
        lines += [f"**Not the same held-out tokens**: this run was scored on {t['n_tokens']}, the benchmark on "
                  f"{bench_tokens}; FVU, dead and density do not compare exactly.", ""]  # fmt: skip
    rows = benchmark_rows(doc, layer, k, budget) if k is not None else {}
    if not rows:
        lines += [f"No benchmark row at layer {layer}, k {k}: nothing to compare with.", ""]
        return "\n".join(lines)
    n_tok = t["n_tokens"]
    sp = t["sparsity"]
    dce = final.get("delta_ce")
    lines += [
        "| row | seeds | final FVU | L0 | final ΔCE | dead | max density |",
        "|---|---|---|---|---|---|---|",
        f"| **this run** | 1 | {final['fvu']:.4f} | {final['l0_mean']:.1f} | {'—' if dce is None else f'{dce:.4f}'} "
        f"| {sp['dead_fraction']:.1%} | {sp.get('max_density', float('nan')):.2f} |",
    ]
    best = None

    def mean_fvu(kv: tuple[str, list[dict]]) -> float:
        return statistics.mean(e["eval"]["prefixes"][-1]["fvu"] for e in kv[1])

    for name, es in sorted(rows.items(), key=mean_fvu):
        fin = [e["eval"]["prefixes"][-1] for e in es]
        fvu = statistics.mean(p["fvu"] for p in fin)
        lines.append(
            f"| {name} | {len(es)} | {_mean_sd([p['fvu'] for p in fin])} | "
            f"{statistics.mean(p['l0_mean'] for p in fin):.1f} | {_mean_sd([p.get('delta_ce') for p in fin])} | "
            f"{_pct([e['eval'].get('dead_fraction') for e in es])} | "
            f"{max(e['eval'].get('max_density') or 0 for e in es):.2f} |"
        )
        if not name.startswith("ours") and "skip" not in name and (best is None or fvu < best[1]):
            best = (name, fvu)
    lines.append("")
    if best is not None:
        rel = final["fvu"] / best[1] - 1
        lines.append(
            f"Best peer without a skip connection: `{best[0]}` at final FVU {best[1]:.4f}; this run is "
            f"{abs(rel):.1%} {'below' if rel < 0 else 'above'} it ({n_tok} held-out tokens)."
        )
        lines.append("")
    return "\n".join(lines)
