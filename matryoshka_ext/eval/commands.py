"""Command-line entry points: ``eval``, ``compare`` and ``samples`` (wired into ``matryoshka_ext.cli``).

    matryoshka-ext eval TRANSCODER [--n-tokens 16384] [--splice-tokens 4096] [--out DIR] ...
    matryoshka-ext compare A B [C ...] [--names a,b,c] [--out DIR] ...
    matryoshka-ext samples TRANSCODER [--n-tokens 65536] [--top-n 16] [--window 16,4] [--out DIR] ...

TRANSCODER is anything ``load_transcoder`` reads: our run / checkpoint / ``save_pretrained`` folder, a Gemma
Scope ``params.npz``, a Gemma Scope 2 ``params.safetensors``, a SAELens folder, or ``hf:OWNER/REPO/FOLDER``.

Shared flags (all commands):
  --model NAME          language model (data.models.load_model); default: the transcoder's recorded model, else
                        gemma-3-270m-offline
  --layer L             transcoded block; default: the layer recorded with the transcoder (required otherwise)
  --input-hook/--output-hook  hook templates with {layer}; default Gemma Scope's ln2.hook_normalized ->
                        hook_mlp_out (data.sites)
  --dataset, --split, --dataset-subset, --text-field, --streaming
                        held-out text (default: the training run's dataset and eval_split, else the offline
                        Debian corpus, split "eval")
  --context-size T      tokens per context (BOS first; BOS/pad positions are excluded everywhere); default: the
                        run's context_size, else 128
  --batch-contexts B    contexts per language-model forward
  --device              auto | cpu | cuda | cuda:N;   --model-dtype float32 | bfloat16 | float16 (default: the
                        run's model_dtype, else float32)
  --mode                our transcoders' selection: jumprelu (inference, default), batch or row
  --out DIR             output folder (default: eval_out/<command>-<name>)
  --no-progress         no progress bar
eval/compare: --n-tokens, --splice-tokens (0 = no spliced loss), --splice-batch-contexts, --splice-prefixes
  (all | last | 1,3,5), --dense-threshold, --chunk-tokens, --no-cache; compare: --names (display names).
  A training run of ours already holds its held-out activations (``eval_tokens`` of ``eval_split``, cached at
  the end of training): when the data flags agree with the run's, FVU/L0/density come from that cache (the
  first --n-tokens rows; default: all of them) and the language model runs only for the spliced loss
  (``--splice-tokens 0``: not loaded at all). ``--no-cache`` computes them with the language model instead.
samples: --n-tokens, --top-n, --window LEFT,RIGHT, --report-latents (per group, markdown), --browser-latents
  (latents whose contexts are embedded in the HTML), --browser-contexts, --coact-latents (co-activation is
  counted among the first this-many latents; 0 = off), --redundancy auto | on | off (decoder max-cosine;
  auto = when F^2 * d_out <= 2e12 multiply-adds).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

OFFLINE_MODEL = "gemma-3-270m-offline"


# ---------------------------------------------------------------------------------------------- arguments
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by eval, compare and samples (see the module docstring)."""
    g = p.add_argument_group("model, sites and data")
    g.add_argument("--model", default=None, help=f"language model (default: recorded one, else {OFFLINE_MODEL})")
    g.add_argument("--layer", type=int, default=None, help="transcoded block (default: recorded with the transcoder)")
    g.add_argument("--input-hook", default=None, help="input hook template, {layer} filled in (default: Gemma's)")
    g.add_argument("--output-hook", default=None, help="output hook template (default: blocks.{layer}.hook_mlp_out)")
    # None = the training run's value (``_resolve_data_args``), else the one in _FALLBACK
    g.add_argument("--dataset", default=None, help="text: 'offline', a local file/folder, or a hub dataset id")
    g.add_argument("--split", default=None, help="split of the text (default: the run's eval_split, else 'eval')")
    g.add_argument("--dataset-subset", default=None, help="dataset config name (e.g. sample-10BT)")
    g.add_argument("--text-field", default=None, help="text column of the dataset (default: text)")
    g.add_argument("--streaming", action="store_true", help="stream the dataset")
    g.add_argument("--context-size", type=int, default=None, help="tokens per context (BOS first; default 128)")
    g.add_argument("--batch-contexts", type=int, default=8, help="contexts per language-model forward")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--model-dtype", default=None, choices=["float32", "bfloat16", "float16"])
    g.add_argument(
        "--mode",
        default="jumprelu",
        choices=["jumprelu", "batch", "row"],
        help="selection for our transcoders (jumprelu = inference)",
    )
    g.add_argument("--out", default=None, help="output folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--n-tokens", type=int, default=None, help="tokens for fidelity/sparsity (default: the run's cache, else 16384)"
    )
    g.add_argument(
        "--splice-tokens",
        type=int,
        default=4_096,
        help="next-token predictions scored with the spliced model (0 = skip the LM-loss metrics)",
    )
    g.add_argument("--splice-batch-contexts", type=int, default=2, help="contexts per spliced forward")
    g.add_argument("--splice-prefixes", default="all", help="all, last, or comma-separated 1-based prefixes")
    g.add_argument("--dense-threshold", type=float, default=0.1, help="dense = fires on more than this fraction")
    g.add_argument("--chunk-tokens", type=int, default=4096, help="rows per transcoder call")
    g.add_argument("--no-cache", action="store_true", help="FVU/L0 from the LM even when the run's cache exists")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``matryoshka-ext eval TRANSCODER ...``"""
    p.add_argument("transcoder", help="transcoder path (any supported format) or hf:OWNER/REPO/FOLDER")
    add_common_arguments(p)
    _add_eval_flags(p)
    p.add_argument(
        "--benchmark-results",
        default=None,
        help="a quality-benchmark results JSON (benchmarks/quality/results/*.json): eval.md then sets this run "
        "beside every benchmark row at the same layer and k",
    )


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """``matryoshka-ext compare A B ...``"""
    p.add_argument("transcoders", nargs="+", help="two or more transcoders (any supported formats)")
    p.add_argument("--names", default=None, help="comma-separated display names, one per transcoder")
    add_common_arguments(p)
    _add_eval_flags(p)


def add_samples_arguments(p: argparse.ArgumentParser) -> None:
    """``matryoshka-ext samples TRANSCODER ...``"""
    p.add_argument("transcoder", help="transcoder path (any supported format) or hf:OWNER/REPO/FOLDER")
    add_common_arguments(p)
    g = p.add_argument_group("samples")
    g.add_argument("--n-tokens", type=int, default=65_536, help="tokens to scan")
    g.add_argument("--top-n", type=int, default=16, help="contexts kept per latent")
    g.add_argument("--window", default="16,4", help="tokens shown before,after the activating token")
    g.add_argument("--report-latents", type=int, default=5, help="latents per group in the markdown report")
    g.add_argument("--browser-latents", type=int, default=2000, help="latents with contexts in the HTML browser")
    g.add_argument("--browser-contexts", type=int, default=10, help="contexts per latent in the HTML browser")
    g.add_argument("--coact-latents", type=int, default=1024, help="co-activation among the first N latents (0=off)")
    g.add_argument("--redundancy", default="auto", choices=["auto", "on", "off"], help="decoder max-cosine stats")
    g.add_argument("--chunk-tokens", type=int, default=4096, help="rows per transcoder call")


# ---------------------------------------------------------------------------------------------- helpers
# data flags left unset: the run's TrainConfig field they come from, and the value without a run
_DATA_ARGS = {
    "dataset": ("dataset", "offline"),
    "split": ("eval_split", "eval"),
    "dataset_subset": ("dataset_subset", None),
    "text_field": ("text_field", "text"),
    "context_size": ("context_size", 128),
    "model_dtype": ("model_dtype", "float32"),
}
_N_TOKENS = 16_384


def run_config_of(tc: Any) -> Any:
    """The TrainConfig of the training run a loaded transcoder of ours came from (its run folder's
    config.yaml, up to three folders above the loaded path), or None (other formats, unreadable configs)."""
    from pathlib import Path

    from ..config import TrainConfig

    if not str(tc.meta.get("format", "")).startswith("matryoshka-ext") or not tc.meta.get("path"):
        return None
    p = Path(tc.meta["path"])
    for cand in (p, *list(p.parents)[:3]):
        f = cand / "config.yaml"
        if f.is_file():
            try:
                return TrainConfig.load(f)
            except Exception:  # noqa: BLE001 - another version's config: no run defaults, the LM path still works
                return None
    return None


def _resolve_data_args(args: argparse.Namespace, tcs: list[Any]) -> Any:
    """Fill the unset data flags from the transcoders' training run (when they share one config); returns it."""
    cfgs = [run_config_of(t) for t in tcs]
    run = cfgs[0] if cfgs and all(c is not None and c == cfgs[0] for c in cfgs) else None
    for name, (field, fallback) in _DATA_ARGS.items():
        if getattr(args, name, None) is None:
            value = getattr(run, field) if run is not None else fallback
            setattr(args, name, fallback if value is None and name != "dataset_subset" else value)
    return run


def _fallback_data_args(args: argparse.Namespace) -> None:
    for name, (_, fallback) in _DATA_ARGS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, fallback)


def run_eval_cache(args: argparse.Namespace, run: Any, sites: Any) -> str | None:
    """Path of the run's held-out activation cache when it exists and matches what the flags ask for; else None,
    saying on stderr why the language model computes FVU/L0/density instead (when there is a run)."""
    if run is None or not run.eval_tokens or not run.eval_split:
        return None
    if getattr(args, "no_cache", False):
        print("eval: --no-cache: FVU/L0/density from the language model", file=sys.stderr)
        return None
    from ..data.sites import sites_for
    from ..training.pipeline import cache_key, cache_root_dir
    from ..training.sources import cache_is_complete

    same = (
        sites == sites_for(run.layer, run.input_hook, run.output_hook)
        and (args.model is None or args.model == run.model_name)
        and (args.dataset, args.split, args.dataset_subset, args.text_field, args.context_size, args.model_dtype)
        == (run.dataset, run.eval_split, run.dataset_subset, run.text_field, run.context_size, run.model_dtype)
        and (args.n_tokens is None or args.n_tokens <= run.eval_tokens)
    )
    if not same:
        print(
            "eval: the flags ask for other sites, data or more tokens than the run's held-out activation cache "
            f"({run.eval_tokens} tokens): FVU/L0/density from the language model",
            file=sys.stderr,
        )
        return None
    path = os.path.join(cache_root_dir(run), cache_key(run, run.eval_split, run.eval_tokens))
    if not cache_is_complete(path):
        what = "incomplete" if os.path.exists(path) else "missing"
        print(
            f"eval: the run's held-out activation cache is {what} ({path}): FVU/L0/density from the language model",
            file=sys.stderr,
        )
        return None
    return path


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _load_transcoders(paths: list[str], names: list[str] | None, args: argparse.Namespace) -> list[Any]:
    from ..loaders import load_transcoder

    dev = _device(args.device)
    out = []
    for i, p in enumerate(paths):
        name = names[i] if names else None
        out.append(load_transcoder(p, device=dev, name=name, mode=args.mode))
    seen: dict[str, int] = {}
    for t in out:  # display names must be unique: suffix repeats
        if t.name in seen:
            seen[t.name] += 1
            t.name = f"{t.name}#{seen[t.name]}"
        else:
            seen[t.name] = 1
    return out


def _sites(args: argparse.Namespace, tcs: list[Any]) -> Any:
    from ..data.sites import sites_for

    layers = {t.meta.get("layer") for t in tcs} - {None}
    layer = args.layer
    if layer is None:
        if len(layers) != 1:
            raise SystemExit(
                f"cannot tell the layer ({'transcoders disagree: ' + str(sorted(layers)) if layers else 'not recorded'}"
                "): pass --layer"
            )
        layer = layers.pop()
    elif layers - {layer}:
        print(f"warning: --layer {layer} differs from the recorded layer(s) {sorted(layers)}", file=sys.stderr)
    return sites_for(layer, args.input_hook, args.output_hook)


def _lm(args: argparse.Namespace, tcs: list[Any]) -> Any:
    import torch

    from .._timing import stage
    from ..data.models import load_model

    _fallback_data_args(args)
    name = args.model or next((t.meta["model_name"] for t in tcs if t.meta.get("model_name")), None) or OFFLINE_MODEL
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.model_dtype]
    with stage("model load"):
        model = load_model(name, device=_device(args.device), dtype=dtype)
    model.eval()
    return model, name


def _contexts(args: argparse.Namespace, model: Any) -> Any:
    from ..data.text import text_dataset
    from ..data.tokens import token_contexts

    _fallback_data_args(args)
    texts = text_dataset(
        args.dataset,
        split=args.split,
        streaming=args.streaming,
        text_field=args.text_field,
        subset=args.dataset_subset,
    )
    return token_contexts(texts, model, args.context_size, prepend_bos=True)


def _check_widths(model: Any, sites: Any, tcs: list[Any]) -> None:
    import torch

    with torch.no_grad():
        _, cache = model.run_with_cache(
            torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device),
            names_filter=list(sites.hooks),
            stop_at_layer=sites.layer + 1,
        )
    d_in, d_out = cache[sites.input_hook].shape[-1], cache[sites.output_hook].shape[-1]
    for t in tcs:
        if (t.d_in, t.d_out) != (d_in, d_out):
            raise SystemExit(
                f"{t.name}: transcoder maps {t.d_in} -> {t.d_out}, but the sites {sites.input_hook} -> "
                f"{sites.output_hook} are {d_in} -> {d_out}"
            )


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:80] or "transcoder"


def _eval_config(args: argparse.Namespace, n_tokens: int | None = None) -> Any:
    from .evaluate import EvalConfig

    return EvalConfig(
        n_tokens=n_tokens or args.n_tokens or _N_TOKENS,
        splice_tokens=args.splice_tokens,
        batch_contexts=args.batch_contexts,
        splice_batch_contexts=args.splice_batch_contexts,
        splice_prefixes=args.splice_prefixes
        if args.splice_prefixes in ("all", "last")
        else [int(s) for s in args.splice_prefixes.split(",") if s.strip()],
        dense_threshold=args.dense_threshold,
        chunk_tokens=args.chunk_tokens,
    )


def _run_eval(args: argparse.Namespace, paths: list[str], names: list[str] | None, command: str) -> dict[str, Any]:
    from .evaluate import evaluate

    _eval_config(args).validate()
    tcs = _load_transcoders(paths, names, args)
    run = _resolve_data_args(args, tcs)
    sites = _sites(args, tcs)
    cache = run_eval_cache(args, run, sites)
    activations = None
    if cache is not None:
        from ..training.sources import CachedActivations

        held = CachedActivations(cache, batch_size=1, mode="mmap")
        cfg = _eval_config(args, n_tokens=args.n_tokens or held.tokens)
        activations = held.ordered_batches(cfg.chunk_tokens)
        print(f"eval: FVU/L0/density from the run's held-out activation cache ({held.tokens} tokens): {cache}")
        for t in tcs:
            if (t.d_in, t.d_out) != (held.d_in, held.d_out):
                raise SystemExit(f"{t.name}: maps {t.d_in} -> {t.d_out}, the cache holds {held.d_in} -> {held.d_out}")
    else:
        cfg = _eval_config(args)
    model = contexts = None
    model_name = args.model or (run.model_name if run is not None else None)
    if activations is None or cfg.splice_tokens:
        model, model_name = _lm(args, tcs)
        _check_widths(model, sites, tcs)
        contexts = _contexts(args, model)
    res = evaluate(tcs, model, sites, contexts, cfg, progress=not args.no_progress, activations=activations)
    res["meta"] = {
        "command": command,
        "model": model_name,
        "dataset": f"{args.dataset} [{args.split}]",
        "context_size": args.context_size,
        "transcoders": ", ".join(paths),
    }
    if run is not None:
        res["meta"]["k"] = run.transcoder.k
    return res


# ---------------------------------------------------------------------------------------------- commands
def eval_command(args: argparse.Namespace) -> int:
    """Evaluate one transcoder; writes eval.json, eval.md and plots to --out. Returns the exit status."""
    from .report import write_eval

    res = _run_eval(args, [args.transcoder], None, "eval")
    out = args.out or os.path.join("eval_out", "eval-" + _slug(res["transcoders"][0]["name"]))
    extra = ""
    if args.benchmark_results:
        from .benchmark_context import benchmark_section

        extra = benchmark_section(res, args.benchmark_results, res["meta"].get("k"))
    paths = write_eval(res, out, extra_md=extra)
    _print_summary(res)
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to {out}")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """Evaluate several transcoders on the same tokens; writes compare.md, eval.json and plots to --out."""
    from .report import write_compare

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.transcoders):
        raise SystemExit(f"--names has {len(names)} entries for {len(args.transcoders)} transcoders")
    res = _run_eval(args, list(args.transcoders), names, "compare")
    out = args.out or os.path.join("eval_out", "compare")
    paths = write_compare(res, out)
    _print_summary(res)
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in paths.values()))} to {out}")
    return 0


def samples_command(args: argparse.Namespace) -> int:
    """Collect top activating contexts; writes samples.{safetensors,json}, samples.md and browser.html."""
    from .._timing import stage
    from .interp import CoactivationStats
    from .samples import collect_samples

    left, right = (int(v) for v in args.window.split(","))
    (tc,) = _load_transcoders([args.transcoder], None, args)
    _resolve_data_args(args, [tc])
    sites = _sites(args, [tc])
    model, model_name = _lm(args, [tc])
    _check_widths(model, sites, [tc])
    contexts = _contexts(args, model)
    coact = None
    if args.coact_latents > 0:
        coact = CoactivationStats(tc.num_latents, args.coact_latents, device=model.cfg.device)
    with stage("samples: top contexts (LM + transcoder)"):
        samples = collect_samples(
            tc,
            model,
            sites,
            contexts,
            n_tokens=args.n_tokens,
            top_n=args.top_n,
            window=(left, right),
            batch_contexts=args.batch_contexts,
            chunk_tokens=args.chunk_tokens,
            progress=not args.no_progress,
            on_acts=coact.update if coact is not None else None,
        )
    if coact is not None:
        v, i = coact.max_jaccard()
        samples.stats["coact_max_jaccard"], samples.stats["coact_partner"] = v, i
    with stage("samples: decoder redundancy, reports, browser"):
        _write_samples(args, tc, samples, model_name)
    return 0


def _write_samples(args: argparse.Namespace, tc: Any, samples: Any, model_name: str) -> None:
    """Decoder max-cosine stats (when cheap enough), then samples.{safetensors,json}, samples.md, browser.html."""
    import torch

    from .browser import write_browser, write_markdown_report
    from .interp import decoder_redundancy

    W = tc.decoder_weights()
    cost = tc.num_latents**2 * tc.d_out
    if W is not None and (args.redundancy == "on" or (args.redundancy == "auto" and cost <= 2e12)):
        with torch.no_grad():
            v, i = decoder_redundancy(W.detach())
        samples.stats["decoder_max_cos"], samples.stats["decoder_max_cos_partner"] = v, i
    samples.meta.update(model=model_name, dataset=f"{args.dataset} [{args.split}]", transcoder=args.transcoder)
    out = args.out or os.path.join("eval_out", "samples-" + _slug(tc.name))
    samples.save(out)
    write_markdown_report(samples, os.path.join(out, "samples.md"), per_group=args.report_latents)
    write_browser(samples, os.path.join(out, "browser.html"), args.browser_latents, args.browser_contexts)
    live = int((samples.fire_count > 0).sum())
    print(f"{samples.n_tokens} tokens scanned; {live}/{tc.num_latents} latents fired")
    print(f"wrote samples.safetensors, samples.json, samples.md, browser.html to {out}")


def _print_summary(res: dict[str, Any]) -> None:
    c = res["clean"]
    if "ce" in c:
        print(f"clean CE {c['ce']:.4f} | zero-abl. {c['ce_zero_ablation']:.4f} | mean-abl. {c['ce_mean_ablation']:.4f}")
    for t in res["transcoders"]:
        for p in t["prefixes"]:
            dce = "" if p["delta_ce"] is None else f" dCE {p['delta_ce']:+.4f}"
            if p["delta_ce"] is not None and p.get("delta_ce_se") is not None:
                dce += f" ± {p['delta_ce_se']:.4f}"
            if p.get("delta_ce_step") is not None and p.get("delta_ce_step_se") is not None:
                dce += f" (step {p['delta_ce_step']:+.4f} ± {p['delta_ce_step_se']:.4f})"
            dce += "" if p["delta_ce"] is None else f" KL {p['kl']:.4f}"
            print(
                f"{t['name']} prefix {p['prefix']} ({p['latents']} latents): L0 {p['l0_mean']:.1f} "
                f"FVU {p['fvu']:.4f} cos {p['cosine']:.3f}{dce}"
            )
        print(f"{t['name']}: dead {t['sparsity']['dead']}, dense {t['sparsity']['dense']}")


COMMANDS = {
    "eval": (
        "evaluate a transcoder: fidelity, sparsity and spliced LM loss per prefix",
        add_eval_arguments,
        eval_command,
    ),
    "compare": ("evaluate several transcoders on the same tokens and sites", add_compare_arguments, compare_command),
    "samples": (
        "top activating contexts per latent, markdown report and HTML feature browser",
        add_samples_arguments,
        samples_command,
    ),
}
