"""Transcoder quality of bf16-LM vs fp32-LM activation caches (docs/MAIN_JOB.md, "Language model dtype").

Two training runs that differ only in ``model_dtype`` (their activation caches were made by the LM in that dtype,
both stored as bf16) are scored on the same held-out tokens:

- FVU / L0 / dead / dense per prefix on **each** run's held-out activation cache (the same token positions: both
  caches come from the same eval split, context size and token count; only the LM dtype that produced them differs);
- the spliced ΔCE per prefix (paired SE, clustered by context) with the LM in ``--splice-dtype`` (default bfloat16,
  the default ``model_dtype``) on the same predictions for both transcoders.

    .venv/bin/python scripts/lm_dtype_quality.py runs/offline-default runs/offline-fp32lm \
        [--splice-tokens 4096] [--splice-dtype bfloat16] [--out runs/lm-dtype-quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def _cache_path(cfg) -> str:
    from matryoshka_ext.training.pipeline import cache_key, cache_root_dir
    from matryoshka_ext.training.sources import cache_is_complete

    path = os.path.join(cache_root_dir(cfg), cache_key(cfg, cfg.eval_split, cfg.eval_tokens))
    if not cache_is_complete(path):
        raise SystemExit(f"held-out cache missing or incomplete: {path}")
    return path


def main() -> None:
    from matryoshka_ext.config import TrainConfig
    from matryoshka_ext.data.models import load_model
    from matryoshka_ext.data.sites import sites_for
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts
    from matryoshka_ext.eval.evaluate import EvalConfig, evaluate
    from matryoshka_ext.loaders import load_transcoder
    from matryoshka_ext.training.sources import CachedActivations

    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="training run folders (same data, different model_dtype)")
    p.add_argument("--splice-tokens", type=int, default=4096)
    p.add_argument("--splice-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--out", default=None, help="JSON results (default: print only)")
    args = p.parse_args()
    cfgs = [TrainConfig.load(os.path.join(r, "config.yaml")) for r in args.runs]
    names = [f"{os.path.basename(r.rstrip('/'))} ({c.model_dtype} LM)" for r, c in zip(args.runs, cfgs)]
    tcs = [load_transcoder(os.path.join(r, "transcoder"), name=n) for r, n in zip(args.runs, names)]
    sites = sites_for(cfgs[0].layer, cfgs[0].input_hook, cfgs[0].output_hook)
    out: dict = {"runs": args.runs, "fidelity": {}, "splice": None}
    for c in cfgs:  # fidelity on each run's held-out cache, every transcoder on it
        path = _cache_path(c)
        held = CachedActivations(path, batch_size=1, mode="mmap")
        t = time.perf_counter()
        res = evaluate(tcs, None, sites, None, EvalConfig(n_tokens=held.tokens, splice_tokens=0),
                       activations=held.ordered_batches(4096))  # fmt: skip
        key = f"{c.model_dtype} cache"
        out["fidelity"][key] = {"path": path, "tokens": held.tokens, "seconds": time.perf_counter() - t, "rows": []}
        for r in res["transcoders"]:
            last = r["prefixes"][-1]
            row = {
                "transcoder": r["name"],
                "fvu": [q["fvu"] for q in r["prefixes"]],
                "l0": last["l0_mean"],
                "dead": r["sparsity"]["dead"],
                "dead_fraction": r["sparsity"]["dead_fraction"],
                "dense": r["sparsity"]["dense"],
            }
            out["fidelity"][key]["rows"].append(row)
            print(f"[{key}] {r['name']}: FVU/prefix {[round(v, 4) for v in row['fvu']]}, L0 {row['l0']:.2f}, "
                  f"dead {row['dead']} ({row['dead_fraction']:.1%}), dense {row['dense']}")  # fmt: skip
    if args.splice_tokens:
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.splice_dtype]
        model = load_model(cfgs[0].model_name, dtype=dtype)
        model.eval()
        c = cfgs[0]
        texts = text_dataset(c.dataset, split=c.eval_split, subset=c.dataset_subset, text_field=c.text_field)
        contexts = token_contexts(texts, model, c.context_size, prepend_bos=True)
        t = time.perf_counter()
        res = evaluate(tcs, model, sites, contexts, EvalConfig(n_tokens=1, splice_tokens=args.splice_tokens))
        sp = {"lm_dtype": args.splice_dtype, "clean": res["clean"], "seconds": time.perf_counter() - t, "rows": []}
        for r in res["transcoders"]:
            for q in r["prefixes"]:
                sp["rows"].append({"transcoder": r["name"], "prefix": q["prefix"], "delta_ce": q["delta_ce"],
                                   "se": q["delta_ce_se"], "step": q["delta_ce_step"],
                                   "step_se": q["delta_ce_step_se"]})  # fmt: skip
                print(f"[splice, {args.splice_dtype} LM] {r['name']} prefix {q['prefix']}: ΔCE {q['delta_ce']:.4f} "
                      f"± {q['delta_ce_se']:.4f}")  # fmt: skip
        out["splice"] = sp
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
