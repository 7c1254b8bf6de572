"""results/*.json -> benchmarks/QUALITY.md (+ frontier and per-prefix PNGs beside it). Nothing is re-measured:

    python -m benchmarks.quality.report [--results DIR] [--out benchmarks/QUALITY.md]

Per (result file, layer, budget, k, row): mean and spread (sample std over seeds; "n=1" when one seed) of
per-prefix FVU and L0, final-prefix delta CE / CE recovered / KL, dead and dense fractions, training time.
"Where we stand" compares, at equal mode, k and budget, our row with each peer's: final-prefix FVU ratio and
L0, dead fraction and time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .spec import ROWS

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "QUALITY.md"


def _ms(vals: list[float | None], fmt: str = "{:.3f}") -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(statistics.mean(v))} ± {fmt.format(statistics.stdev(v))}"


def _mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.mean(v) if v else None


def group_runs(doc: dict[str, Any]) -> dict[tuple, list[dict[str, Any]]]:
    """{(layer, budget, k, row): [runs over seeds]} for the evaluated runs."""
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in doc["runs"]:
        if "eval" in r:
            out[(r["layer"], r["budget"], r["k"], r["row"])].append(r)
    return out


def row_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates of one (layer, budget, k, row) over its seeds."""
    m = len(runs[0]["eval"]["prefixes"])
    per = [[r["eval"]["prefixes"][i] for r in runs] for i in range(m)]
    last = per[-1]
    return {
        "seeds": len(runs),
        "fvu": [[p["fvu"] for p in ps] for ps in per],
        "l0": [[p["l0_mean"] for p in ps] for ps in per],
        "dce": [[p["delta_ce"] for p in ps] for ps in per],
        "final_fvu": [p["fvu"] for p in last],
        "final_l0": [p["l0_mean"] for p in last],
        "final_dce": [p["delta_ce"] for p in last],
        "final_rec": [p["ce_recovered_zero"] for p in last],
        "final_kl": [p["kl"] for p in last],
        "dead": [r["eval"]["dead_fraction"] for r in runs],
        "dense": [r["eval"]["dense_fraction"] for r in runs],
        "dense_threshold": runs[0]["eval"]["dense_threshold"],
        "n_tokens": runs[0]["eval"]["n_tokens"],
        "train_s": [r["train"]["train_s"] for r in runs],
        "tokens": [r["train"]["tokens"] for r in runs],
    }


def main_table(groups: dict[tuple, list[dict[str, Any]]]) -> list[str]:
    lines = ["| layer | budget | k | row | mode | seeds | FVU per prefix (mean) | final FVU | final L0 | final ΔCE "
             "| CE rec. (zero) | KL | dead | dense | train tokens | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (layer, budget, k, row), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                 list(ROWS).index(kv[0][3]))):
        s = row_stats(runs)
        curve = " / ".join(f"{_mean(v):.3f}" for v in s["fvu"])
        lines.append(
            f"| {layer} | {budget} | {k} | {row} | {ROWS[row].mode} | {s['seeds']} | {curve} | {_ms(s['final_fvu'])} "
            f"| {_ms(s['final_l0'], '{:.1f}')} | {_ms(s['final_dce'])} | {_ms(s['final_rec'])} | {_ms(s['final_kl'])} "
            f"| {_ms(s['dead'], '{:.1%}')} | {_ms(s['dense'], '{:.1%}')} | {_ms(s['tokens'], '{:.0f}')} "
            f"| {_ms(s['train_s'], '{:.0f}')} |"
        )
    return lines


def standing(groups: dict[tuple, list[dict[str, Any]]]) -> list[str]:
    """Our Matryoshka row against every other row of the same mode, k, budget and layer."""
    lines = ["| layer | budget | k | mode | ours | other | ours final FVU | other final FVU | other/ours | "
             "ours L0 | other L0 | ours dead | other dead | ours s | other s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (layer, budget, k, row), runs in sorted(groups.items()):
        spec = ROWS[row]
        ours = "ours" if spec.mode == "transcoder" else "ours_sae"
        if row == ours or (layer, budget, k, ours) not in groups:
            continue
        a, b = row_stats(groups[(layer, budget, k, ours)]), row_stats(runs)
        fa, fb = _mean(a["final_fvu"]), _mean(b["final_fvu"])
        lines.append(
            f"| {layer} | {budget} | {k} | {spec.mode} | {ours} | {row} | {fa:.3f} | {fb:.3f} | {fb / fa:.2f} "
            f"| {_mean(a['final_l0']):.1f} | {_mean(b['final_l0']):.1f} | {_mean(a['dead']):.1%} "
            f"| {_mean(b['dead']):.1%} | {_mean(a['train_s']):.0f} | {_mean(b['train_s']):.0f} |"
        )
    return lines


def plots(name: str, groups: dict[tuple, list[dict[str, Any]]], dest: Path) -> list[str]:
    """Frontier (final FVU vs final L0 over k) and per-prefix FVU curves (largest k run per row); PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for (layer, budget) in sorted({(g[0], g[1]) for g in groups}):
        for mode in ("transcoder", "sae"):
            sel = {g: v for g, v in groups.items() if g[0] == layer and g[1] == budget and ROWS[g[3]].mode == mode}
            if not sel:
                continue
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
            for row in [r for r in ROWS if any(g[3] == r for g in sel)]:
                ks = sorted(g[2] for g in sel if g[3] == row)
                st = [row_stats(sel[(layer, budget, k, row)]) for k in ks]
                ax1.plot([_mean(s["final_l0"]) for s in st], [_mean(s["final_fvu"]) for s in st], "o-", label=row)
                k_show = 32 if 32 in ks else ks[-1]
                s = row_stats(sel[(layer, budget, k_show, row)])
                ax2.plot(range(1, len(s["fvu"]) + 1), [_mean(v) for v in s["fvu"]], "o-", label=f"{row} (k={k_show})")
            ax1.set(xlabel="final-prefix L0", ylabel="final-prefix FVU (held-out)", title=f"frontier, L{layer} {mode}")
            ax2.set(xlabel="prefix", ylabel="FVU (held-out)", title=f"per-prefix FVU, {budget} budget")
            for ax in (ax1, ax2):
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.tight_layout()
            png = f"quality_{name}_L{layer}_{budget}_{mode}.png"
            fig.savefig(dest / png, dpi=110)
            plt.close(fig)
            made.append(png)
    return made


def render(docs: dict[str, dict[str, Any]], dest_dir: Path) -> str:
    out = ["# Quality benchmark (issue 13)", "",
           "Generated by `python -m benchmarks.quality.report` from `benchmarks/quality/results/*.json` "
           "(written by `python -m benchmarks.quality.run`, `make quality`). Do not edit by hand.", "",
           "Every row is trained by its own library's training code on the same activation cache (same train "
           "tokens, same order per seed) at the same dictionary size, groups, k, batch and token budget, and "
           "scored by one harness (`matryoshka_ext.eval.evaluate`) on the same held-out cache: FVU and L0 per "
           "prefix, dead/dense fractions over every held-out token, spliced ΔCE / CE recovered (vs zero "
           "ablation) / KL on the first held-out contexts (transcoder rows only). Each model uses its own "
           "inference rule (BatchTopK rows: JumpReLU at their learned threshold; sparsify: per-row TopK). "
           "Rows: see `benchmarks/quality/spec.py`; peer settings and the defaults capped for short runs: "
           "`benchmarks/quality/train_peer.py`. Spread = sample std over seeds.", ""]  # fmt: skip
    for name, doc in sorted(docs.items()):
        meta = doc.get("meta", {})
        groups = group_runs(doc)
        grid = meta.get("grid", {})
        out += [f"## Run `{name}`" + (" — REDUCED grid" if meta.get("reduced") else ""), ""]
        caches = "; ".join(f"L{layer}: train {c['train_tokens']} tokens, held-out {c['heldout_tokens']} tokens"
                           for layer, c in meta.get("caches", {}).items())  # fmt: skip
        out += [f"- {meta.get('date_utc', '?')}, {meta.get('machine', {}).get('cpus', '?')} CPUs "
                f"(load average at the end {meta.get('machine', {}).get('loadavg_end', ['?'])[0]:.1f}; the box is "
                "shared, so times carry that load), whole run {meta.get('wall_s', 0) / 60:.0f} min.",
                f"- Grid: seeds {grid.get('seeds')}, k {grid.get('ks')}, budgets {grid.get('budgets')}, "
                f"splice tokens {grid.get('splice_tokens')}. Caches: {caches}.",
                f"- Package defaults read at run time: {meta.get('defaults')}.", ""]  # fmt: skip
        unavailable = sorted({f"{r['row']} ({r['unavailable']})" for r in doc["runs"] if "unavailable" in r})
        if unavailable:
            out += ["Rows not run: " + "; ".join(unavailable) + ".", ""]
        out += ["### All rows", ""] + main_table(groups) + [""]
        out += ["### Where we stand (our Matryoshka row vs each other row, same mode, k, budget)", ""]
        out += standing(groups) + [""]
        for png in plots(name, groups, dest_dir):
            out += [f"![{png}]({png})", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--out", default=str(DOC))
    p.add_argument("--include-smoke", action="store_true", help="also render results named smoke*/test*")
    a = p.parse_args(argv)
    docs = {}
    for f in sorted(Path(a.results).glob("*.json")):
        if not a.include_smoke and f.stem.startswith(("smoke", "test")):
            continue
        docs[f.stem] = json.loads(f.read_text())
    out = Path(a.out)
    out.write_text(render(docs, out.parent))
    print(f"[quality] wrote {out} ({len(docs)} result files)")


if __name__ == "__main__":
    main()
