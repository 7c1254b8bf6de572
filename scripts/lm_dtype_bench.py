"""Language-model forward in bfloat16 against float32 on the offline default (docs/MAIN_JOB.md holds the figures).

Measures, on the same held-out token contexts of the offline corpus:
- tokens/s of the caching forward (``run_with_cache`` at layer L's two sites, ``stop_at_layer=L+1``), per dtype;
- relative error ||a_bf16 - a_fp32|| / ||a_fp32|| of the activations at both sites (BOS positions dropped, as
  the cache does), and the same after rounding the fp32 activations to bf16 (what the bf16 cache stores anyway);
- the clean next-token CE of a full forward in each dtype.

    .venv/bin/python scripts/lm_dtype_bench.py [--layer 12] [--contexts 48] [--context-size 256]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from matryoshka_ext.data.models import load_model
from matryoshka_ext.data.sites import sites_for
from matryoshka_ext.data.text import text_dataset
from matryoshka_ext.data.tokens import token_contexts


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--contexts", type=int, default=48)
    p.add_argument("--context-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ce-contexts", type=int, default=16)
    args = p.parse_args()
    sites = sites_for(args.layer)
    out: dict = {"threads": torch.get_num_threads(), "layer": args.layer}
    acts, ce = {}, {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        t0 = time.perf_counter()
        model = load_model("gemma-3-270m-offline", dtype=dt)
        out[f"load_s_{name}"] = time.perf_counter() - t0
        if name == "float32":
            ctx = torch.stack(list(_take(token_contexts(text_dataset("offline", split="eval"), model,
                                                        args.context_size), args.contexts)))
            keep = ctx != model.tokenizer.bos_token_id
        xs, ys = [], []
        with torch.inference_mode():
            model.run_with_cache(ctx[:2], names_filter=list(sites.hooks), stop_at_layer=args.layer + 1)  # warm-up
            t0 = time.perf_counter()
            for b in ctx.split(args.batch):
                _, cache = model.run_with_cache(b, names_filter=list(sites.hooks), stop_at_layer=args.layer + 1)
                xs.append(cache[sites.input_hook].float())
                ys.append(cache[sites.output_hook].float())
            sec = time.perf_counter() - t0
            out[f"tokens_per_s_{name}"] = ctx.numel() / sec
            total, n = 0.0, 0
            for b, k in zip(ctx[: args.ce_contexts].split(2), keep[: args.ce_contexts].split(2)):
                logits = model(b, return_type="logits")
                scored = k[:, :-1] & k[:, 1:]
                lp = torch.log_softmax(logits[:, :-1][scored].float(), -1)
                total += float(-lp.gather(1, b[:, 1:][scored][:, None]).double().sum())
                n += int(scored.sum())
            ce[name] = total / n
        acts[name] = (torch.cat(xs)[keep], torch.cat(ys)[keep])
        del model
    for i, site in enumerate(("input", "output")):
        ref, got = acts["float32"][i], acts["bfloat16"][i]
        out[f"rel_err_{site}"] = _rel(got, ref)
        out[f"rel_err_{site}_fp32_rounded_to_bf16"] = _rel(ref.bfloat16().float(), ref)
    out["ce_float32"], out["ce_bfloat16"] = ce["float32"], ce["bfloat16"]
    out["speedup"] = out["tokens_per_s_bfloat16"] / out["tokens_per_s_float32"]
    print(json.dumps(out, indent=2))


def _take(it, n):
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


if __name__ == "__main__":
    main()
