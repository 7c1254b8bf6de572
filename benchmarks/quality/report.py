"""Results documents -> benchmarks/QUALITY.md (+ frontier and per-prefix PNGs beside it). Nothing is re-measured:

    python -m benchmarks.quality.report [--results DIR] [--out benchmarks/QUALITY.md]

Reads every ``<name>.json`` that ``benchmarks.quality.run`` wrote (default benchmarks/quality/results/). Per
(document, layer, budget, k, row): mean and spread (sample std over seeds; one seed shows the value alone) of
per-prefix FVU and L0, final-prefix spliced delta CE / CE recovered / KL, dead and dense fractions, training time.
Our rows at the equal-wall-clock budget are their equal-token runs (the peers are given our training time).
"Where we stand": for each peer row, our Matryoshka row of the same mode at the same layer, k and budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import schedule
from .spec import ROWS, full_grid

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "QUALITY.md"
Key = tuple  # (layer, budget, k, row)


def _vals(vals: list[float | None]) -> list[float]:
    return [x for x in vals if x is not None]


def _ms(vals: list[float | None], fmt: str = "{:.3f}") -> str:
    """'mean ± std' over seeds ('value' for one seed, '-' for none)."""
    v = _vals(vals)
    if not v:
        return "-"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(statistics.mean(v))} ± {fmt.format(statistics.stdev(v))}"


def _mean(vals: list[float | None]) -> float | None:
    v = _vals(vals)
    return statistics.mean(v) if v else None


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def group_runs(doc: dict[str, Any]) -> dict[Key, list[dict[str, Any]]]:
    """{(layer, budget, k, row): [scored runs over seeds]}; our reference rows (ours, ours_sae) are listed under
    "time" too (same models) wherever a peer has an equal-time run at that layer, k and seed."""
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    runs = [r for r in doc["runs"] if "eval" in r]
    for r in runs:
        out[(r["layer"], r["budget"], r["k"], r["row"])].append(r)
    timed = {(r["layer"], r["k"], r["seed"]) for r in runs if r["budget"] == "time"}
    for r in runs:
        if r["row"] in ("ours", "ours_sae") and r["budget"] == "tokens" and (r["layer"], r["k"], r["seed"]) in timed:
            out[(r["layer"], "time", r["k"], r["row"])].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["seed"])
    return out


def row_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates of one (layer, budget, k, row) over its seeds: lists (one value per seed) per metric."""
    m = len(runs[0]["eval"]["prefixes"])
    per = [[r["eval"]["prefixes"][i] for r in runs] for i in range(m)]
    last = per[-1]
    return {
        "seeds": [r["seed"] for r in runs],
        "fvu": [[p["fvu"] for p in ps] for ps in per],
        "l0": [[p["l0_mean"] for p in ps] for ps in per],
        "dce": [[p.get("delta_ce") for p in ps] for ps in per],
        "final_fvu": [p["fvu"] for p in last],
        "final_l0": [p["l0_mean"] for p in last],
        "final_dce": [p.get("delta_ce") for p in last],
        "final_rec": [p.get("ce_recovered_zero") for p in last],
        "final_kl": [p.get("kl") for p in last],
        "dead": [r["eval"]["dead_fraction"] for r in runs],
        "dense": [r["eval"]["dense_fraction"] for r in runs],
        "max_density": [r["eval"].get("max_density") for r in runs],
        "dense_threshold": runs[0]["eval"]["dense_threshold"],
        "n_tokens": runs[0]["eval"]["n_tokens"],
        "train_s": [r["train"]["train_s"] for r in runs],
        "tokens": [r["train"]["tokens"] for r in runs],
    }


def _order(key: Key) -> tuple:
    layer, budget, k, row = key
    return (layer, budget != "tokens", k, list(ROWS).index(row))


def rows_table(groups: dict[Key, list[dict[str, Any]]], layer: int, budget: str, k: int) -> list[str]:
    """Every row at one layer, budget and k."""
    sel = sorted((g for g in groups if g[:3] == (layer, budget, k)), key=_order)
    if not sel:
        return []
    lines = ["| row | mode | seeds | FVU per prefix (mean) | final FVU | final L0 | final ΔCE | CE rec. (zero) | KL "
             "| dead | dense | max density | train tokens | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in sel:
        s = row_stats(groups[g])
        curve = " / ".join(_f(_mean(v)) for v in s["fvu"])
        lines.append(
            f"| {g[3]} | {ROWS[g[3]].mode} | {len(s['seeds'])} | {curve} | {_ms(s['final_fvu'])} "
            f"| {_ms(s['final_l0'], '{:.1f}')} | {_ms(s['final_dce'])} | {_ms(s['final_rec'])} | {_ms(s['final_kl'])} "
            f"| {_ms(s['dead'], '{:.1%}')} | {_ms(s['dense'], '{:.1%}')} | {_ms(s['max_density'], '{:.2f}')} "
            f"| {_ms(s['tokens'], '{:.0f}')} "
            f"| {_ms(s['train_s'], '{:.0f}')} |"
        )
    return lines


TRAIN_KEYS = (
    "lr", "min_lr", "warmup_steps", "batch_tokens", "ema_decay", "density_cap", "density_cap_rate", "revive_rate"
)  # fmt: skip


def our_settings(groups: dict[Key, list[dict[str, Any]]], layer: int, budget: str, k: int) -> list[str]:
    """The training settings each of our rows actually ran with (the package default of its run's day): a row
    whose seeds ran with different defaults says so, so that no table silently mixes two configurations."""
    lines = []
    for g in sorted((g for g in groups if g[:3] == (layer, budget, k) and ROWS[g[3]].impl == "ours"), key=_order):
        seen = []
        for r in groups[g]:
            c = r["train"].get("config", {})
            tc = c.get("transcoder", {})
            desc = ", ".join(f"{key} {c[key]}" for key in TRAIN_KEYS if key in c)
            desc += (f", selection {tc.get('selection', 'batch')}, decoder_norm {tc.get('decoder_norm', 'unit')}, "
                     f"dead_tokens {tc.get('dead_tokens')}, final_prefix_weight {tc.get('final_prefix_weight', 1.0)}")
            if desc not in [d for d, _ in seen]:
                seen.append((desc, []))
            next(v for d, v in seen if d == desc).append(str(r["seed"]))
        lines.append(f"- `{g[3]}`: " + "; ".join(f"seeds {','.join(v)}: {d}" for d, v in seen))
    return lines


def splice_table(groups: dict[Key, list[dict[str, Any]]]) -> list[str]:
    """ΔCE per prefix wherever more than the last prefix was spliced (mean over the seeds that have it)."""
    lines = []
    for g in sorted(groups, key=_order):
        s = row_stats(groups[g])
        if len(s["dce"]) < 2 or sum(1 for v in s["dce"] if _vals(v)) < 2:
            continue
        if not lines:
            lines = ["| layer | budget | k | row | ΔCE per prefix (nats) | KL per prefix |",
                     "|---|---|---|---|---|---|"]  # fmt: skip
        kl = [[p["eval"]["prefixes"][i].get("kl") for p in groups[g]] for i in range(len(s["dce"]))]
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {g[3]} | {' / '.join(_f(_mean(v)) for v in s['dce'])} "
                     f"| {' / '.join(_f(_mean(v), '{:.4f}') for v in kl)} |")  # fmt: skip
    return lines


def standing(groups: dict[Key, list[dict[str, Any]]]) -> list[str]:
    """A section per peer row: our Matryoshka row of its mode against it, at every layer, budget and k."""
    out: list[str] = []
    peers = [r for r in ROWS if r not in ("ours", "ours_sae")]
    for peer in peers:
        ours = "ours" if ROWS[peer].mode == "transcoder" else "ours_sae"
        pairs = sorted((g for g in groups if g[3] == peer and (g[0], g[1], g[2], ours) in groups), key=_order)
        if not pairs:
            continue
        out += [f"### {peer} ({ROWS[peer].about}) vs {ours}", "",
                "| layer | budget | k | seeds (ours/peer) | final FVU ours | final FVU peer | peer/ours "
                "| L0 ours / peer | final ΔCE ours / peer | dead ours / peer | dense ours / peer | train s ours / peer "
                "| tokens ours / peer |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for g in pairs:
            a, b = row_stats(groups[(g[0], g[1], g[2], ours)]), row_stats(groups[g])
            fa, fb = _mean(a["final_fvu"]), _mean(b["final_fvu"])
            ratio = _f(fb / fa, "{:.2f}") if fa and fb is not None else "-"
            out.append(
                f"| {g[0]} | {g[1]} | {g[2]} | {len(a['seeds'])}/{len(b['seeds'])} | {_ms(a['final_fvu'])} "
                f"| {_ms(b['final_fvu'])} | {ratio} | {_f(_mean(a['final_l0']), '{:.1f}')} / "
                f"{_f(_mean(b['final_l0']), '{:.1f}')} | {_f(_mean(a['final_dce']))} / {_f(_mean(b['final_dce']))} "
                f"| {_f(_mean(a['dead']), '{:.1%}')} / {_f(_mean(b['dead']), '{:.1%}')} "
                f"| {_f(_mean(a['dense']), '{:.1%}')} / {_f(_mean(b['dense']), '{:.1%}')} "
                f"| {_f(_mean(a['train_s']), '{:.0f}')} / {_f(_mean(b['train_s']), '{:.0f}')} "
                f"| {_f(_mean(a['tokens']), '{:.0f}')} / {_f(_mean(b['tokens']), '{:.0f}')} |"
            )
        out.append("")
    return out


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def goals(groups: dict[Key, list[dict[str, Any]]], k: int = 32) -> list[str]:
    """Issue 13's benchmark goals, checked against the means over seeds (k = 32, every layer with our rows)."""
    out: list[str] = []

    def fvu(layer: int, budget: str, row: str) -> tuple[float | None, int]:
        runs = groups.get((layer, budget, k, row), [])
        return (_mean([r["eval"]["prefixes"][-1]["fvu"] for r in runs]) if runs else None), len(runs)

    for layer in sorted({g[0] for g in groups if g[3] == "ours" and g[2] == k}):
        ours, n = fvu(layer, "tokens", "ours")
        assert ours is not None
        out += [f"Layer {layer}, k = {k}, means over seeds (seed counts in brackets):", ""]
        cases = (("ours", "transcoder", False, "Equal tokens, transcoders without a skip connection"),
                 ("ours_skip", "transcoder", True, "Equal tokens, skip transcoders"),
                 ("ours_sae", "sae", False, "Equal tokens, SAE mode (not a goal: every peer has a row)"))  # fmt: skip
        for mine, mode, skip, what in cases:
            m, mn = fvu(layer, "tokens", mine)
            peers = [(r, *fvu(layer, "tokens", r)) for r in ROWS if ROWS[r].impl != "ours"
                     and ROWS[r].mode == mode and ("skip" in r) == skip]  # fmt: skip
            peers = [p for p in peers if p[1] is not None]
            if m is None or not peers:
                continue
            best = min(peers, key=lambda p: p[1])
            out.append(f"- {what}: `{mine}` {m:.4f} [{mn}] vs the best peer `{best[0]}` {best[1]:.4f} [{best[2]}]: "
                       f"{_met(m <= best[1])} ({m / best[1] - 1:+.1%}).")  # fmt: skip
        timed = [(r, *fvu(layer, "time", r)) for r in ROWS if ROWS[r].impl != "ours"]
        for r, f, c in timed:
            if f is None:
                continue
            ref = "ours" if ROWS[r].mode == "transcoder" else "ours_sae"
            mine = "ours_skip" if "skip" in r else ref
            m, mn = fvu(layer, "tokens", mine)
            if m is not None:
                out.append(f"- Equal wall-clock: `{mine}` {m:.4f} [{mn}] vs `{r}` trained for our time {f:.4f} [{c}]: "
                           f"{_met(m < f)}.")  # fmt: skip
        plain, pn = fvu(layer, "tokens", "ours_plain")
        if plain is not None:
            out.append(f"- Nesting costs little: `ours` {ours:.4f} [{n}] within 5% of plain BatchTopK `ours_plain` "
                       f"{plain:.4f} [{pn}]: {_met(ours <= 1.05 * plain)} ({ours / plain - 1:+.1%}).")  # fmt: skip
        sk, skn = fvu(layer, "tokens", "ours_skip")
        if sk is not None:
            out.append(f"- The skip connection lowers final FVU at equal L0: {ours:.4f} -> {sk:.4f} [{skn}]: "
                       f"{_met(sk < ours)}.")
        runs = groups[(layer, "tokens", k, "ours")]
        dead = max(r["eval"]["dead_fraction"] for r in runs)
        dens = max(r["eval"].get("max_density") or 0.0 for r in runs)
        out += [f"- The default configuration's figures on this layer (the `ours` row): final FVU "
                f"{ours:.4f} <= 0.38 {_met(ours <= 0.38)}; dead at most {dead:.1%} of latents over "
                f"{runs[0]['eval']['n_tokens']:,} held-out tokens (< 5%: {_met(dead < 0.05)}); densest latent "
                f"{dens:.2f} of tokens (<= 0.5: {_met(dens <= 0.5)}).", ""]  # fmt: skip
    return out


def plots(name: str, groups: dict[Key, list[dict[str, Any]]], dest: Path) -> list[str]:
    """Per (layer, budget, mode): the frontier (final-prefix FVU vs final-prefix L0 over k, one line per row) and
    the per-prefix FVU curves at k = 32 (or the row's largest k). Returns the PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for layer, budget in sorted({(g[0], g[1]) for g in groups}):
        for mode in ("transcoder", "sae"):
            sel = {g: v for g, v in groups.items() if g[0] == layer and g[1] == budget and ROWS[g[3]].mode == mode}
            if not sel:
                continue
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
            for row in [r for r in ROWS if any(g[3] == r for g in sel)]:
                ks = sorted(g[2] for g in sel if g[3] == row)
                st = [row_stats(sel[(layer, budget, k, row)]) for k in ks]
                ax1.plot([_mean(s["final_l0"]) for s in st], [_mean(s["final_fvu"]) for s in st], "o-",
                         label=f"{row} (k {'/'.join(map(str, ks))})")  # fmt: skip
                k_show = 32 if 32 in ks else ks[-1]
                s = row_stats(sel[(layer, budget, k_show, row)])
                ends = [p["latents"] for p in sel[(layer, budget, k_show, row)][0]["eval"]["prefixes"]]
                ax2.plot(ends, [_mean(v) for v in s["fvu"]], "o-", label=f"{row} (k={k_show}, n={len(s['seeds'])})")
            ax1.set(xlabel="final-prefix L0 (held-out)", ylabel="final-prefix FVU (held-out)",
                    title=f"frontier: layer {layer} {mode}, {budget} budget")  # fmt: skip
            ax2.set(xlabel="prefix size (latents)", ylabel="FVU (held-out)", xscale="log",
                    title=f"per-prefix FVU: layer {layer} {mode}, {budget} budget")  # fmt: skip
            sizes = sorted({p["latents"] for v in sel.values() for p in v[0]["eval"]["prefixes"]})
            ax2.set_xticks(sizes, [str(x) for x in sizes])  # the prefix ends, not log-scale minor labels
            ax2.minorticks_off()
            for ax in (ax1, ax2):
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.tight_layout()
            png = f"quality_{name}_L{layer}_{budget}_{mode}.png"
            fig.savefig(dest / png, dpi=110)
            plt.close(fig)
            made.append(png)
    return made




def estimate(doc: dict[str, Any]) -> list[str]:
    """The full grid's cost from this document's measured jobs (``schedule.estimate``: each job at the median time of
    its measured twins, training + scoring + its share of splicing), on one core and on 2 parallel workers."""
    if not any("eval" in r for r in doc["runs"]):
        return []
    grid = full_grid()
    cpu, wall2, unmeasured = schedule.estimate(grid, doc["runs"], 2)
    by_impl: dict[str, float] = defaultdict(float)
    for j, cost in schedule.costs(grid, doc["runs"]).items():
        by_impl[ROWS[j.row].impl] += cost
    share = ", ".join(f"{impl} {v / 3600:.1f} h" for impl, v in sorted(by_impl.items(), key=lambda t: -t[1]))
    lines = [f"- Full grid (`spec.full_grid`, {len(grid.jobs())} jobs) at this document's measured speed: "
             f"{cpu / 3600:.1f} h of one core ({share}); `make quality` runs it on 2 workers "
             f"(`run.py --workers 2`, one thread each): "
             f"about {wall2 / 3600:.1f} h on 2 idle cores.",
             f"- Measured wall-clock of the last `run.py` session on this document: "
             f"{doc.get('meta', {}).get('wall_s_last_session', 0) / 3600:.2f} h with "
             f"{doc.get('meta', {}).get('workers', 1)} worker(s) (only the jobs it had left to do)."]  # fmt: skip
    if unmeasured:
        lines.append(f"- Never measured (counted at {schedule.UNMEASURED_S:.0f} s a job): {', '.join(unmeasured)}.")
    return lines + [""]


INTRO = [
    "# Quality benchmark (issue 13)", "",
    "Generated by `python -m benchmarks.quality.report` from `benchmarks/quality/results/*.json` (written by "
    "`python -m benchmarks.quality.run`; `make quality` runs both). Do not edit by hand.", "",
    "Every row is trained by its own library's training code on the same activation cache (same train tokens, same "
    "order per seed) at the same dictionary size (4096), groups / prefix ends (256/512/1024/2048/4096), k, "
    "batch (the package default at run time: each document lists it) and token budget, and scored by one "
    "harness (`matryoshka_ext.eval.evaluate`) on the same held-out "
    "cache: FVU and L0 per prefix and dead / dense fractions over every held-out token (122,880; dense = fires on "
    "more than 10% of tokens), spliced ΔCE / CE recovered (vs zero ablation) / KL on the first held-out contexts "
    "(transcoder rows; SAE rows are not spliced). Each model uses its own inference rule (the BatchTopK rows: "
    "JumpReLU at their learned threshold; sparsify: per-row TopK). Rows: `benchmarks/quality/spec.py`; peer "
    "settings and the defaults adjusted for short runs: `benchmarks/quality/train_peer.py` and the README beside "
    "it. Spread = sample std over seeds; one seed shows its value alone.", "",
]  # fmt: skip


EXPERIMENTS = HERE / "experiments"


def experiments_section(exp_dir: Path = EXPERIMENTS) -> list[str]:
    """The training experiments (``experiments/train_and_score.py``, one JSON line per run in ``*.jsonl``) as one
    table per file, then the hand-written explanation ``experiments/NOTES.md`` (which cites these tables)."""
    out: list[str] = []
    files = sorted(exp_dir.glob("*.jsonl")) if exp_dir.exists() else []
    if not files:
        return out
    out += ["## Training experiments (1.2M tokens, our default TrainConfig plus the overrides)", "",
            "One run per line of `benchmarks/quality/experiments/<file>.jsonl` (script: `train_and_score.py` there): "
            "the package default TrainConfig *of that session* with the JSON overrides shown, trained on the "
            "benchmark's layer-12 train cache (`_layer` in the overrides: that layer's; k = 32 unless overridden) "
            "and scored on all 122,880 held-out tokens with the JumpReLU "
            "inference rule unless the inference column says otherwise (dead = "
            "never fires; dense10 / dense50 = latents firing on more than 10% / 50% of tokens). Wall seconds carry the "
            "shared box's load.", ""]  # fmt: skip
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        seen: dict[str, dict[str, Any]] = {}
        for r in rows:  # a re-scored run (wall 0) replaces its first line
            seen[r["name"]] = r
        out += [f"### `{f.name}`", "",
                "| run | overrides | inference | FVU per prefix | final FVU | L0 | dead | dead per group | dense10 "
                "| dense50 | max density | wall s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in seen.values():
            # row-trained models: their training threshold is not a per-token TopK's, so they are shown with
            # per-row TopK inference (as sparsify) where scored, else BatchTopK; the rest with JumpReLU
            rowsel = json.loads(r.get("over") or "{}").get("transcoder", {}).get("selection") == "row"
            how = ("row" if "row" in r else "batch") if rowsel else "jumprelu"
            j = r[how]
            over = r.get("over", "{}").replace("|", "\\|")
            curve = " / ".join(f"{v:.3f}" for v in j["fvu"])
            out.append(f"| {r['name']} | `{over}` | {how} | {curve} | {j['fvu'][-1]:.3f} | {j['l0']:.1f} "
                       f"| {j['dead']:.1%} | {'/'.join(map(str, j['dead_per_group']))} | {j['dense10']} "
                       f"| {j['dense50']} | {j['maxdens']:.2f} | {r.get('wall_s', 0):.0f} |")  # fmt: skip
        out.append("")
    notes = exp_dir / "NOTES.md"
    if notes.exists():
        out += [notes.read_text().rstrip(), ""]
    return out


def render(docs: dict[str, dict[str, Any]], dest_dir: Path) -> str:
    out = list(INTRO)
    for name, doc in sorted(docs.items()):
        meta = doc.get("meta", {})
        groups = group_runs(doc)
        grid = meta.get("grid", {})
        mach = meta.get("machine", {})
        out += [f"## Results `{name}`" + (" (reduced grid)" if meta.get("reduced") else ""), ""]
        caches = "; ".join(f"layer {layer}: train {c['train_tokens']:,} tokens, held-out {c['heldout_tokens']:,}"
                           for layer, c in meta.get("caches", {}).items())  # fmt: skip
        n_done = sum(1 for r in doc["runs"] if "eval" in r)
        out += [f"- Started {meta.get('date_utc', '?')} on {mach.get('cpus', '?')} CPUs, {mach.get('threads', '?')} "
                f"training thread(s); load average {mach.get('loadavg_start', ['?'])[0]} at the start (the box is "
                "shared, so times carry that load; each run records its load before/after).",
                f"- Caches: {caches}. Spliced tokens: {grid.get('splice_tokens')}. Scored runs: {n_done}.",
                f"- Package defaults read at run time: {meta.get('defaults')}; peers: {meta.get('peer_versions')}.",
                ""]  # fmt: skip
        unavailable = sorted({f"{r['row']} ({r['unavailable']})" for r in doc["runs"] if "unavailable" in r})
        if unavailable:
            out += ["Rows not run: " + "; ".join(unavailable) + ".", ""]
        for layer, budget, k in sorted({g[:3] for g in groups}, key=lambda t: (t[0], t[1] != "tokens", t[2])):
            what = "equal tokens" if budget == "tokens" else "equal wall-clock (peers trained for our time)"
            out += [f"### Layer {layer}, {what}, k = {k}", ""] + rows_table(groups, layer, budget, k) + [""]
            settings = our_settings(groups, layer, budget, k)
            if settings:
                out += ["Our rows' training settings (TrainConfig at their run):", ""] + settings + [""]
        est = estimate(doc)
        if est:
            out += ["### Cost of the full grid, from these measurements", ""] + est
        sp = splice_table(groups)
        if sp:
            out += ["### Spliced loss per prefix", ""] + sp + [""]
        gl = goals(groups)
        if gl:
            out += ["### Issue-13 goals, from these numbers", ""] + gl
        st = standing(groups)
        if st:
            out += ["### Where we stand", ""] + st
        for png in plots(name, groups, dest_dir):
            out += [f"![{png}]({png})", ""]
    out += experiments_section()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--out", default=str(DOC))
    p.add_argument("--include-smoke", action="store_true", help="also render documents named smoke*/test*")
    a = p.parse_args(argv)
    docs = {}
    for f in sorted(Path(a.results).glob("*.json")):
        if not a.include_smoke and f.stem.startswith(("smoke", "test")):
            continue
        docs[f.stem] = json.loads(f.read_text())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(docs, out.parent))
    print(f"[quality] wrote {out} ({len(docs)} results documents)")


if __name__ == "__main__":
    main()
