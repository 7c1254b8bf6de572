import sys

import torch

sys.path.insert(0, "/work/main")
from benchmarks.quality.caches import default_cache_pair, heldout_batches
from matryoshka_ext.loaders import load_transcoder

m = load_transcoder(sys.argv[1])
m = getattr(m, "model", m)
pair = default_cache_pair(12)
F = m.cfg.dict_size
cnt = torch.zeros(F)
n = 0
sumact = torch.zeros(F)
ysum = 0
with torch.no_grad():
    for x, y in heldout_batches(pair.heldout, "transcoder", n_tokens=32768, batch=4096):
        a = m.encode(x.float())
        pos = a.values > 0
        cnt += torch.bincount(a.indices[pos], minlength=F).float()
        n += x.shape[0]
        sumact += torch.bincount(a.indices[pos], weights=a.values[pos].float(), minlength=F)
        ysum = ysum + y.float().sum(0)
dens = cnt / n
ymean = ysum / n
top = dens.argsort(descending=True)[:8]
Wd = m.W_dec.float()
for i in top.tolist():
    cos = float(torch.nn.functional.cosine_similarity(Wd[i], ymean, dim=0))
    print(
        i,
        round(float(dens[i]), 3),
        "mean act",
        round(float(sumact[i] / cnt[i].clamp_min(1)), 3),
        "cos(W_dec, mean y)",
        round(cos, 3),
        "b_enc",
        round(float(m.b_enc[i]), 3),
    )
print("|b_dec|", float(m.b_dec.norm()), "|ymean|", float(ymean.norm()))
