"""Write evaluation results: strict JSON, a markdown summary, and PNG plots (matplotlib, Agg backend).

``write_eval(result, out_dir)`` (one or several transcoders):
    eval.json, eval.md, fvu_vs_prefix.png, delta_ce_vs_prefix.png, l0_hist.png, density_hist.png
``write_compare(result, out_dir)`` adds the side-by-side view:
    compare.md (one table row per transcoder prefix), fvu_vs_l0.png, delta_ce_vs_l0.png
Each of our prefixes is its own point (a nested dictionary is a family of transcoders of growing L0).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any


def sanitize(obj: Any) -> Any:
    """Recursively replace NaN / inf by None so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def write_json(obj: Any, path: str) -> str:
    with open(path, "w") as fh:
        json.dump(sanitize(obj), fh, indent=2, allow_nan=False)
    return path


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _pm(v: Any, se: Any) -> str:
    """'value ± se' (4 decimals), or the value alone when there is no finite SE."""
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    if se is None or not math.isfinite(se):
        return f"{v:.4f}"
    return f"{v:.4f} ± {se:.4f}"


def _step(p: dict[str, Any]) -> str:
    """The change of CE from the previous spliced prefix ± its paired SE, marked with the prefix it starts from
    when that is not the one just before."""
    if p.get("delta_ce_step") is None:
        return "–"
    out = f"{p['delta_ce_step']:+.4f}"
    se = p.get("delta_ce_step_se")
    if se is not None and math.isfinite(se):
        out += f" ± {se:.4f}"
    if p.get("delta_ce_step_from") not in (None, p["prefix"] - 1):
        out += f" (from {p['delta_ce_step_from']})"
    return out


# ------------------------------------------------------------------------------------------------ markdown
def eval_markdown(result: dict[str, Any], title: str = "Transcoder evaluation") -> str:
    """Markdown summary: set-up, clean/ablation losses, per-prefix table and sparsity of every transcoder."""
    s, c, cfg = result["sites"], result["clean"], result["config"]
    lines = [f"# {title}", ""]
    meta = result.get("meta", {})
    if meta:
        lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [
        f"- sites: `{s['input_hook']}` -> `{s['output_hook']}` (layer {s['layer']})",
        f"- fidelity tokens: {result['transcoders'][0]['n_tokens']} (BOS/pad excluded); "
        f"spliced predictions scored: {c.get('n_scored', 0)}",
        f"- dense = fires on > {cfg['dense_threshold']:.0%} of tokens; dead = never fired on the evaluated tokens",
        "",
    ]
    if "ce" in c:
        lines += [
            f"- ΔCE ± SE: paired over the {c.get('n_scored', 0)} shared predictions, clustered by context "
            f"({c.get('n_contexts', '?')} contexts; eval.json also holds the i.i.d.-token SE); "
            "step = CE of this prefix − CE of the previous one (negative: the larger prefix predicts better); "
            "|step| < 2 SE is within noise",
            "",
            "| clean CE | zero-ablation CE | mean-ablation CE | KL zero-abl. | KL mean-abl. |",
            "|---|---|---|---|---|",
            f"| {_fmt(c['ce'])} | {_fmt(c['ce_zero_ablation'])} | {_fmt(c['ce_mean_ablation'])} | "
            f"{_fmt(c['kl_zero_ablation'])} | {_fmt(c['kl_mean_ablation'])} |",
            "",
        ]
    for t in result["transcoders"]:
        d = t["describe"]
        sp = t["sparsity"]
        lines += [
            f"## {t['name']}",
            "",
            f"format `{d['meta'].get('format', d['class'])}`, d_in {d['d_in']}, d_out {d['d_out']}, "
            f"{d['num_latents']} latents, prefix ends {d['prefix_ends'] or '—'}",
            "",
            "| prefix | latents | L0 | FVU | expl. var. | cosine | MSE | CE | ΔCE ± SE | step ± SE | CE rec. (zero) "
            "| CE rec. (mean) | KL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in t["prefixes"]:
            lines.append(
                f"| {p['prefix']} | {p['latents']} | {_fmt(p['l0_mean'])} | {_fmt(p['fvu'])} | "
                f"{_fmt(p['explained_variance'])} | {_fmt(p['cosine'])} | {_fmt(p['mse'])} | {_fmt(p['ce'])} | "
                f"{_pm(p['delta_ce'], p.get('delta_ce_se'))} | {_step(p)} | {_fmt(p['ce_recovered_zero'])} | "
                f"{_fmt(p['ce_recovered_mean'])} | {_fmt(p['kl'])} |"
            )
        lines += [
            "",
            f"L0 (all latents): mean {_fmt(sp['l0_mean'][-1])}, median {_fmt(sp['l0_median'][-1])}. "
            f"Dead: {sp['dead']} ({sp['dead_fraction']:.1%}). Dense: {sp['dense']} ({sp['dense_fraction']:.1%}). "
            f"Densest latent: {_fmt(sp.get('max_density'))} of tokens.",
            "",
            "| group | latents | dead | dense | mean density | L0 contribution |",
            "|---|---|---|---|---|---|",
        ]
        for g in sp["groups"]:
            a, b = g["latents"]
            lines.append(
                f"| {g['group']} | {a}–{b - 1} | {g['dead']} | {g['dense']} | {_fmt(g['mean_density'])} | "
                f"{_fmt(g['l0_mean'])} |"
            )
        lines.append("")
    lines.append(f"_Evaluated in {result.get('timing_s', 0):.1f} s._")
    return "\n".join(lines) + "\n"


def compare_markdown(result: dict[str, Any]) -> str:
    """One row per (transcoder, prefix), sorted by L0: the side-by-side table."""
    rows = []
    for t in result["transcoders"]:
        for p in t["prefixes"]:
            rows.append((t["name"], p))
    rows.sort(key=lambda r: r[1]["l0_mean"] if r[1]["l0_mean"] is not None else math.inf)
    c = result["clean"]
    lines = ["# Transcoder comparison (same tokens, same sites)", ""]
    if "ce" in c:
        lines += [
            f"Clean CE {_fmt(c['ce'])}; zero-ablation CE {_fmt(c['ce_zero_ablation'])}; "
            f"mean-ablation CE {_fmt(c['ce_mean_ablation'])}; {c['n_scored']} predictions scored.",
            "",
        ]
    lines += [
        "| transcoder | prefix | latents | L0 | FVU | cosine | ΔCE | CE rec. (zero) | KL | dead | dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_name = {t["name"]: t for t in result["transcoders"]}
    for name, p in rows:
        sp = by_name[name]["sparsity"]
        last = p["prefix"] == len(by_name[name]["prefixes"])
        lines.append(
            f"| {name} | {p['prefix']} | {p['latents']} | {_fmt(p['l0_mean'])} | {_fmt(p['fvu'])} | "
            f"{_fmt(p['cosine'])} | {_fmt(p['delta_ce'])} | {_fmt(p['ce_recovered_zero'])} | {_fmt(p['kl'])} | "
            f"{sp['dead'] if last else ''} | {sp['dense'] if last else ''} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_vs_prefix(result: dict[str, Any], key: str, ylabel: str, path: str) -> str | None:
    """``key`` (fvu, delta_ce, ...) against the prefix's number of latents, one line per transcoder."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for t in result["transcoders"]:
        pts = [(p["latents"], p[key], p.get(f"{key}_se")) for p in t["prefixes"] if p.get(key) is not None]
        if pts:
            xs, ys, se = zip(*pts)
            if all(e is not None and math.isfinite(e) for e in se):  # paired SE (ΔCE): 1-SE error bars
                ax.errorbar(xs, ys, yerr=se, marker="o", capsize=3, label=f"{t['name']} (± 1 SE)")
            else:
                ax.plot(xs, ys, marker="o", label=t["name"])
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents in prefix")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_vs_l0(result: dict[str, Any], key: str, ylabel: str, path: str) -> str | None:
    """``key`` against mean L0; each transcoder a series, each of its prefixes a point (labelled by prefix)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for t in result["transcoders"]:
        pts = [(p["l0_mean"], p[key], p["prefix"]) for p in t["prefixes"] if p.get(key) is not None]
        pts = [q for q in pts if q[0] is not None and q[0] > 0]
        if not pts:
            continue
        xs, ys, ps = zip(*pts)
        ax.plot(xs, ys, marker="o", label=t["name"], linestyle="-" if len(pts) > 1 else "none")
        if len(pts) > 1:
            for x, y, p in pts:
                ax.annotate(str(p), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_l0_hist(result: dict[str, Any], path: str) -> str:
    """Histogram of per-token L0 (all latents) for each transcoder."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in result["transcoders"]:
        h = t["sparsity"]["l0_hist"]
        if sum(h):
            ax.step(range(len(h)), h, where="mid", label=t["name"])
    ax.set_xlabel("L0 of a token")
    ax.set_ylabel("tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_density_hist(result: dict[str, Any], path: str) -> str:
    """Live latents per log10-density bin, plus the dead latents as their own bar, per transcoder."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    n = len(result["transcoders"])
    width = 0.8 / max(n, 1)
    labels: list[str] = []
    for j, t in enumerate(result["transcoders"]):
        dh = t["sparsity"]["density_hist"]
        edges = dh["log10_edges"]
        counts = [dh["dead"], *dh["counts"]]
        labels = ["dead"] + ["<1e-7" if e is None else f"≥1e{int(e)}" for e in edges]
        ax.bar([i + j * width for i in range(len(counts))], counts, width=width, label=t["name"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=45, fontsize=7)
    ax.set_xlabel("fraction of tokens a latent fires on")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ writers
def _interp_section(md_path: str) -> str:
    """The section ``matryoshka-ext interp`` added to an existing eval.md (kept when eval rewrites it), or ''."""
    from .interp_command import EVAL_BEGIN, EVAL_END

    if not os.path.isfile(md_path):
        return ""
    with open(md_path) as fh:
        text = fh.read()
    a, b = text.find(EVAL_BEGIN), text.find(EVAL_END)
    return text[a : b + len(EVAL_END)] + "\n" if a >= 0 and b > a else ""


def write_eval(
    result: dict[str, Any], out_dir: str, title: str = "Transcoder evaluation", extra_md: str = ""
) -> dict[str, str]:
    """eval.json, eval.md (``extra_md`` appended to the summary) and the four plots; returns {artifact: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": write_json(result, os.path.join(out_dir, "eval.json")),
        "markdown": os.path.join(out_dir, "eval.md"),
    }
    kept = _interp_section(paths["markdown"])
    with open(paths["markdown"], "w") as fh:
        fh.write(eval_markdown(result, title) + ("\n" + extra_md if extra_md else "") + ("\n" + kept if kept else ""))
    per_prefix = (("fvu", "FVU", "fvu_vs_prefix.png"), ("delta_ce", "ΔCE (nats)", "delta_ce_vs_prefix.png"))
    for key, ylabel, fname in per_prefix:
        p = plot_vs_prefix(result, key, ylabel, os.path.join(out_dir, fname))
        if p:
            paths[fname] = p
    paths["l0_hist.png"] = plot_l0_hist(result, os.path.join(out_dir, "l0_hist.png"))
    paths["density_hist.png"] = plot_density_hist(result, os.path.join(out_dir, "density_hist.png"))
    return paths


def write_compare(result: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Everything ``write_eval`` writes plus compare.md, fvu_vs_l0.png and delta_ce_vs_l0.png."""
    paths = write_eval(result, out_dir, title="Transcoder comparison: details")
    paths["compare"] = os.path.join(out_dir, "compare.md")
    with open(paths["compare"], "w") as fh:
        fh.write(compare_markdown(result))
    for key, ylabel, fname in (
        ("fvu", "FVU", "fvu_vs_l0.png"),
        ("delta_ce", "ΔCE (nats)", "delta_ce_vs_l0.png"),
    ):
        p = plot_vs_l0(result, key, ylabel, os.path.join(out_dir, fname))
        if p:
            paths[fname] = p
    return paths
