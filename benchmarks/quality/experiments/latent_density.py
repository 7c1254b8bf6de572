"""Experiment record (issue 13): how rare the latents of experiment runs are on the 122,880 held-out tokens.

Histogram of per-latent firing rates (JumpReLU inference) and the 1% / 5% / 50% quantiles, for runs trained by
``train_and_score.py`` (folders under /work/exp/runs). Used to read what ``dead_tokens`` does besides lowering
the dead count (NOTES.md, fourth session). Usage: python latent_density.py RUN [RUN ...]
"""

import sys

import torch

sys.path.insert(0, "/work/main")
from benchmarks.quality.caches import default_cache_pair, heldout_batches
from matryoshka_ext.loaders import load_transcoder

EDGES = [1e-12, 4e-5, 1e-4, 2e-4, 1e-3, 1e-2, 1.01]  # (0, 4e-5) first: 1 to 4 firings in 122,880 tokens


def main() -> None:
    pair = default_cache_pair(12)
    print("run | never | (0,4e-5) | [4e-5,1e-4) | [1e-4,2e-4) | [2e-4,1e-3) | [1e-3,1e-2) | >=1e-2 | q1% q5% q50%")
    for name in sys.argv[1:]:
        tc = load_transcoder(f"/work/exp/runs/{name}")
        model = tc.model if hasattr(tc, "model") else tc
        cnt, n = torch.zeros(model.cfg.dict_size), 0
        with torch.no_grad():
            for x, _y in heldout_batches(pair.heldout, "transcoder", batch=4096):
                acts = model.encode(x.float(), mode="jumprelu")
                cnt += torch.bincount(acts.indices[acts.values > 0], minlength=cnt.numel()).float()
                n += x.shape[0]
        dens = cnt / n
        bins = [int((dens == 0).sum())] + [int(((dens >= lo) & (dens < hi)).sum()) for lo, hi in zip(EDGES, EDGES[1:])]
        q = torch.quantile(dens, torch.tensor([0.01, 0.05, 0.5])).tolist()
        print(f"{name} | " + " | ".join(map(str, bins)) + " | " + " ".join(f"{v:.1e}" for v in q))


main()
