"""``matryoshka-ext interp RUN [RUN ...]``: absorption per prefix, the latent hierarchy and latent pages.

For every transcoder (any format ``load_transcoder`` reads), on the same language model, words and tokens:

1. absorption on the first-letter task (``absorption``; encoder side only, valid for transcoders), per prefix;
2. one scan of ``--n-tokens`` held-out tokens (``pages.scan``): top contexts, activation histograms, contexts by
   activation quantile; the hierarchy across groups from the same tokens (``hierarchy``);
3. direct logit attribution of every decoder row (``pages.logit_attribution``);
4. ``OUT/<name>/browser.html`` (one self-contained page), ``hierarchy.md``, ``samples.md`` and the samples folder;
   ``OUT/interp.json`` and ``OUT/interp.md`` compare all transcoders (absorption table, group summaries, timing).
5. for every argument that is a training run with an eval report (``RUN/eval/eval.md``, the main job's), an
   interp section in that report (absorption table, group summary, timing, links), replaced on a rerun; ``eval``
   keeps it when it rewrites the report. OUT defaults to ``RUN/interp`` for one run folder, else ``eval_out/interp``.

Flags: the shared model/site/data flags of ``eval``; ``--n-tokens`` (scan), ``--top-n``, ``--window``,
``--browser-latents`` (latents whose contexts are embedded), ``--browser-contexts``, ``--quantile-intervals``,
``--per-interval``, ``--hist-bins``, ``--dla-tokens``, ``--words-per-letter``, ``--no-absorption``, ``--no-dla``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


def add_interp_arguments(p: argparse.ArgumentParser) -> None:
    """``matryoshka-ext interp RUN [RUN ...]``"""
    from .commands import add_common_arguments

    p.add_argument("transcoders", nargs="+", help="one or more transcoders (any supported format)")
    p.add_argument("--names", default=None, help="comma-separated display names, one per transcoder")
    add_common_arguments(p)
    g = p.add_argument_group("interp")
    g.add_argument("--n-tokens", type=int, default=32_768, help="tokens scanned for pages and the hierarchy")
    g.add_argument("--top-n", type=int, default=16, help="top contexts kept per latent")
    g.add_argument("--window", default="16,4", help="tokens shown before,after the activating token")
    g.add_argument("--browser-latents", type=int, default=4000, help="latents with contexts embedded in the page")
    g.add_argument("--browser-contexts", type=int, default=8, help="top contexts per latent in the page")
    g.add_argument("--quantile-intervals", type=int, default=4, help="activation quantile intervals per latent")
    g.add_argument("--per-interval", type=int, default=2, help="sampled contexts per quantile interval")
    g.add_argument("--hist-bins", type=int, default=24, help="histogram bins per latent")
    g.add_argument("--dla-tokens", type=int, default=10, help="promoted / suppressed tokens per latent")
    g.add_argument("--words-per-letter", type=int, default=300, help="vocabulary words per first letter")
    g.add_argument("--chunk-tokens", type=int, default=4096, help="rows per transcoder call")
    g.add_argument("--no-absorption", action="store_true", help="skip the absorption measurement")
    g.add_argument("--no-dla", action="store_true", help="skip the direct logit attribution")


def interp_one(tc: Any, model: Any, sites: Any, contexts: Any, args: argparse.Namespace, out: str, word_cache: dict):
    """Everything for one transcoder; returns its JSON-able record (absorption, groups, timing, files)."""
    import torch

    from .absorption import AbsorptionConfig, measure_absorption
    from .browser import PageExtras, choose_browser_latents, write_browser, write_markdown_report
    from .hierarchy import build_hierarchy, markdown_trees
    from .pages import histograms, logit_attribution, output_directions, quantile_contexts, scan
    from .samples import token_strings

    timing: dict[str, float] = {}
    t = time.perf_counter()
    absorption = None
    if not args.no_absorption:
        cfg = AbsorptionConfig(max_words_per_letter=args.words_per_letter)
        absorption = measure_absorption(tc, model, sites, cfg, cache=word_cache)
        timing["absorption_s"] = time.perf_counter() - t
    t = time.perf_counter()
    left, right = (int(v) for v in args.window.split(","))
    rec, samples = scan(
        tc, model, sites, contexts, args.n_tokens, args.top_n, (left, right), args.batch_contexts, args.chunk_tokens
    )
    timing["scan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    W_dec = tc.decoder_weights()
    hier = build_hierarchy(rec.rows, rec.latents, rec.n_rows, tc.ends, W_dec)
    timing["hierarchy_s"] = time.perf_counter() - t
    t = time.perf_counter()
    hist, hist_max = histograms(rec, args.hist_bins)
    chosen = choose_browser_latents(samples, args.browser_latents)
    quant = quantile_contexts(rec, chosen, args.quantile_intervals, args.per_interval, window=(min(left, 12), right))
    dla = None
    W_out = output_directions(tc)
    if not args.no_dla and W_out is not None and W_out.shape[1] == model.cfg.d_model:
        with torch.no_grad():
            dla = logit_attribution(W_out, model, args.dla_tokens)
    ids: set[int] = set()
    if dla is not None:
        ids.update(dla[0].reshape(-1).tolist())
        ids.update(dla[2].reshape(-1).tolist())
    for ivs in quant.values():
        for iv in ivs:
            for _, tok, _, _ in iv["contexts"]:
                ids.update(tok)
    vocab = token_strings(getattr(model, "tokenizer", None), ids)
    timing["pages_s"] = time.perf_counter() - t
    t = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    samples.meta.update(transcoder=tc.name)
    samples.save(os.path.join(out, "samples"))
    write_markdown_report(samples, os.path.join(out, "samples.md"))
    with open(os.path.join(out, "hierarchy.md"), "w") as fh:
        fh.write(markdown_trees(hier, samples))
    extras = PageExtras(
        hist=hist,
        hist_max=hist_max,
        dla=dla,
        quantiles=quant,
        hierarchy=hier,
        absorption=absorption.to_dict() if absorption is not None else None,
        vocab=vocab,
    )
    page = write_browser(
        samples, os.path.join(out, "browser.html"), args.browser_latents, args.browser_contexts, extras
    )
    timing["write_s"] = time.perf_counter() - t
    timing["total_s"] = sum(timing.values())
    return {
        "name": tc.name,
        "num_latents": tc.num_latents,
        "prefix_ends": tc.ends,
        "n_tokens": samples.n_tokens,
        "absorption": absorption.to_dict() if absorption is not None else None,
        "hierarchy": hier.to_dict(),
        "timing": timing,
        "browser": page,
        "browser_mb": os.path.getsize(page) / 2**20,
    }, absorption


def interp_markdown(records: list[dict[str, Any]], absorptions: list[Any], meta: dict[str, Any]) -> str:
    """The comparison report: absorption per prefix, group summaries, timing."""
    from .absorption import markdown_table

    lines = ["# Interpretability: absorption, hierarchy, latent pages", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines.append("")
    if any(a is not None for a in absorptions):
        lines += [
            "## Feature absorption (first-letter task, encoder side), per prefix",
            "",
            "Rates are means over the scored letters of each letter's probe true positives (docs/INTERP.md).",
            "",
            markdown_table([a for a in absorptions if a is not None]),
        ]
    for r in records:
        lines += [f"## {r['name']}: groups", "", *_groups_lines(r), "", _timing_line(r), ""]
    return "\n".join(lines) + "\n"


def _groups_lines(r: dict[str, Any]) -> list[str]:
    """The hierarchy's per-group summary table of one transcoder's record."""
    lines = [
        "| group | latents | live | with parent | mean P(parent \\| child) | "
        "share P > 0.9 | median lift | mean dec. cos | parent in previous group |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in r["hierarchy"]["groups"]:

        def f(k: str, g: dict = g) -> str:
            v = g.get(k)
            return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

        lines.append(
            f"| {g['group']} | {g['latents']} | {g['live']} | {f('with_parent')} | {f('mean_p_parent')} | "
            f"{f('frac_p_parent_over_0_9')} | {f('median_lift')} | {f('mean_parent_cos')} | "
            f"{f('frac_parent_in_previous_group')} |"
        )
    return lines


def _timing_line(r: dict[str, Any]) -> str:
    tm = r["timing"]
    return "Time (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in tm.items()) + f"; browser {r['browser_mb']:.1f} MB"


EVAL_BEGIN, EVAL_END = "<!-- interp: begin -->", "<!-- interp: end -->"


def eval_section(r: dict[str, Any], absorptions: list[Any], out: str, report_dir: str) -> str:
    """The interp section of a run's eval.md: absorption per prefix (every transcoder of this interp run, so the
    comparison stays beside it), this transcoder's group summary and timing, links relative to ``report_dir``."""
    from .absorption import markdown_table

    rel = os.path.relpath
    lines = [EVAL_BEGIN, "", "## Interpretability (`matryoshka-ext interp`)", ""]
    lines += [
        f"Full report: [{rel(os.path.join(out, 'interp.md'), report_dir)}]"
        f"({rel(os.path.join(out, 'interp.md'), report_dir)}); feature browser: "
        f"[{rel(r['browser'], report_dir)}]({rel(r['browser'], report_dir)}) ({r['browser_mb']:.1f} MB); "
        f"{r['n_tokens']} scanned tokens.",
        "",
    ]
    if any(a is not None for a in absorptions):
        lines += [
            "Feature absorption on the first-letter task (encoder side; rates are means over the scored letters of "
            "each letter's probe true positives; docs/INTERP.md):",
            "",
            markdown_table([a for a in absorptions if a is not None]),
        ]
    lines += ["Latent hierarchy (parent = the earlier-group latent that co-fires most):", "", *_groups_lines(r)]
    lines += ["", _timing_line(r), "", EVAL_END]
    return "\n".join(lines) + "\n"


def attach_to_eval_report(md_path: str, section: str) -> None:
    """Put ``section`` at the end of an existing eval.md, replacing an earlier interp section."""
    with open(md_path) as fh:
        text = fh.read()
    a, b = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if a >= 0 and b > a:
        text = text[:a] + text[b + len(EVAL_END) :].lstrip("\n")
    with open(md_path, "w") as fh:
        fh.write(text.rstrip("\n") + "\n\n" + section)


def _run_eval_report(path: str) -> str | None:
    """A run folder's eval report (RUN/eval/eval.md, written by the main job's eval step), if it exists."""
    md = os.path.join(path, "eval", "eval.md")
    return md if os.path.isdir(path) and os.path.isfile(md) else None


def interp_command(args: argparse.Namespace) -> int:
    """Run ``interp`` on every transcoder; writes OUT/interp.{json,md} and OUT/<name>/... . Returns 0."""
    from .commands import _check_widths, _contexts, _lm, _load_transcoders, _sites, _slug

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.transcoders):
        raise SystemExit(f"--names has {len(names)} entries for {len(args.transcoders)} transcoders")
    tcs = _load_transcoders(list(args.transcoders), names, args)
    sites = _sites(args, tcs)
    model, model_name = _lm(args, tcs)
    _check_widths(model, sites, tcs)
    single_run = len(args.transcoders) == 1 and os.path.isfile(os.path.join(args.transcoders[0], "config.yaml"))
    out = args.out or (
        os.path.join(args.transcoders[0], "interp") if single_run else os.path.join("eval_out", "interp")
    )
    records, absorptions, cache = [], [], {}
    for tc in tcs:
        rec, ab = interp_one(tc, model, sites, _contexts(args, model), args, os.path.join(out, _slug(tc.name)), cache)
        records.append(rec)
        absorptions.append(ab)
        tm = rec["timing"]
        print(f"{tc.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in tm.items()) + f"; {rec['browser']}")
        if ab is not None:
            for p in ab.prefixes:
                s = p.summary()
                print(
                    f"  prefix {s['prefix']} ({s['latents']} latents): absorption {s['absorption_rate']:.3f}, full "
                    f"{s['full_absorption_rate']:.3f}, false negatives {s['false_negative_rate']:.3f}, split "
                    f"{s['mean_split_latents']:.2f} ({s['letters_scored']} letters)"
                )
    meta = {
        "model": model_name,
        "sites": f"{sites.input_hook} -> {sites.output_hook}",
        "dataset": f"{args.dataset} [{args.split}]",
        "transcoders": ", ".join(args.transcoders),
        "threads": __import__("torch").get_num_threads(),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "interp.json"), "w") as fh:
        json.dump({"meta": meta, "transcoders": records}, fh, indent=1)
    with open(os.path.join(out, "interp.md"), "w") as fh:
        fh.write(interp_markdown(records, absorptions, meta))
    print(f"wrote interp.json, interp.md and one folder per transcoder to {out}")
    for path, rec in zip(args.transcoders, records):
        md = _run_eval_report(path)
        if md is not None:
            attach_to_eval_report(md, eval_section(rec, absorptions, out, os.path.dirname(md)))
            print(f"added the interp section to {md}")
    return 0
