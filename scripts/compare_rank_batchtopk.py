"""Per-rank vs global BatchTopK on a trained transcoder (the numbers in docs/DISTRIBUTED.md).

Under DDP each rank selects k * N/W activations over its own N/W rows instead of k * N over the global batch.
For W = 2, 4, 8 this prints how much of the global selection the per-rank selections keep (Jaccard of the
selected entries), the L0 of both, and the FVU difference, on held-out cached activations.

    python scripts/compare_rank_batchtopk.py RUN_DIR CACHE_DIR [--batches 4] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import os

import torch

import matryoshka_ext as mx
from matryoshka_ext.training.sources import CachedActivations
from matryoshka_ext.transcoder import MatryoshkaTranscoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a training run folder (its transcoder/ is loaded)")
    p.add_argument("cache", help="an activation cache folder (e.g. the run's eval cache)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--tokens", type=int, default=4096, help="global batch N")
    args = p.parse_args()
    model = MatryoshkaTranscoder.from_pretrained(os.path.join(args.run, "transcoder")).eval()
    data = CachedActivations(args.cache, args.tokens, seed=0)
    k, worlds = model.cfg.k, (2, 4, 8)
    rows: dict[int, list[list[float]]] = {w: [] for w in worlds}
    with torch.no_grad():
        for _ in range(args.batches):
            x, y = next(data)
            pre = model.pre_activations(x)  # [N, F], scaled units
            var = ((y - y.mean(0)) ** 2).sum()

            def fvu(mask: torch.Tensor, pre: torch.Tensor = pre, y: torch.Tensor = y, var: torch.Tensor = var) -> float:
                return float(((model.decode(pre * mask) - y) ** 2).sum() / var)

            glob = mx.batch_topk(pre, k).to_dense() > 0
            f_glob = fvu(glob)
            for w in worlds:
                local = torch.cat([mx.batch_topk(part, k).to_dense() > 0 for part in pre.chunk(w)])
                jac = (glob & local).sum().item() / (glob | local).sum().item()
                n = pre.shape[0]
                rows[w].append([jac, glob.sum().item() / n, local.sum().item() / n, f_glob, fvu(local) - f_glob])
    for w, vals in rows.items():
        jac, l0g, l0l, fg, df = torch.tensor(vals).mean(0).tolist()
        print(
            f"W={w} ({args.tokens // w} rows per rank): Jaccard {jac:.4f}  L0 global {l0g:.2f} per-rank {l0l:.2f}  "
            f"FVU global {fg:.4f}, per-rank - global {df:+.5f}"
        )


if __name__ == "__main__":
    main()
