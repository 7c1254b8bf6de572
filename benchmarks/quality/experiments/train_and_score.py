"""Experiment record (issue 13): train ours on the layer-12 benchmark cache with JSON overrides.

"_patch" monkeypatches: nodecnorm (no unit-norm decoder), fixbdec (b_dec frozen at init), init_tokens (init fit
on N tokens). Scores every prefix on the 122,880 held-out tokens; appends to $QOUT (default /work/exp/q.jsonl; the
first session's results: sweep_L12.jsonl, the second's: sweep2_L12.jsonl). Usage: python train_and_score.py NAME JSON
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, "/work/main")
from benchmarks.quality.caches import default_cache_pair, heldout_batches, train_stream
from matryoshka_ext.config import TrainConfig
from matryoshka_ext.loaders import load_transcoder
from matryoshka_ext.training import Trainer


def main():
    name = sys.argv[1]
    over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    train_cache = over.pop("_train_cache", None)
    layer = int(over.pop("_layer", 12))
    io_mode = over.pop("_mode", "transcoder")  # "sae": y = x (the benchmark's SAE rows)
    patch = over.pop("_patch", {})
    tc_over = over.pop("transcoder", {})
    base = TrainConfig()
    cfg = base.replace(**over)
    cfg = cfg.replace(
        transcoder=cfg.transcoder.replace(**tc_over),
        layer=layer,
        wandb_mode="disabled",
        progress=False,
        eval_tokens=0,
        ckpt_every=0,
        keep_last=1,
        out_dir="/work/exp/runs",
        run_name=name,
        device="cpu",
    )
    pair = default_cache_pair(layer)
    from matryoshka_ext.transcoder import MatryoshkaTranscoder as MT

    if patch.get("nodecnorm"):
        MT.normalize_decoder = lambda self: None
        MT.project_decoder_grad = lambda self: None
    if patch.get("fixbdec"):
        orig0 = MT.initialize_from_batch

        def init_fix(self, x, y, set_scales=True):
            orig0(self, x, y, set_scales)
            self.b_dec.requires_grad_(False)

        MT.initialize_from_batch = init_fix
    if patch.get("init_tokens"):
        s0 = train_stream(train_cache or pair.train, patch["init_tokens"], 12345, "transcoder")
        X0, Y0 = next(iter(s0))
        orig = MT.initialize_from_batch
        MT.initialize_from_batch = lambda self, x, y, set_scales=True: orig(self, X0.float(), Y0.float(), set_scales)
    run_dir = f"/work/exp/runs/{name}"
    t0 = time.time()
    if not os.environ.get("SCORE_ONLY"):
        os.system(f"rm -rf {run_dir}")
        data = train_stream(train_cache or pair.train, cfg.batch_tokens, cfg.seed, io_mode)
        Trainer(cfg, data, run_dir, torch.device("cpu")).run()
    wall = time.time() - t0
    tc = load_transcoder(run_dir)
    model = tc.model if hasattr(tc, "model") else tc
    F = cfg.transcoder.dict_size
    ends = cfg.transcoder.group_ends
    out = {"name": name, "over": sys.argv[2] if len(sys.argv) > 2 else "{}", "wall_s": round(wall, 1)}
    # exact FVU: sum of squared error / total variance around the held-out mean (two passes)
    ys = None
    n = 0
    for _x, y in heldout_batches(pair.heldout, io_mode):
        s = y.double().sum(0)
        ys = s if ys is None else ys + s
        n += y.shape[0]
    ymean = (ys / n).float()
    modes = ("jumprelu", "batch", "row") if cfg.transcoder.selection == "row" else ("jumprelu", "batch")
    for mode in modes:
        sse = torch.zeros(len(ends), dtype=torch.float64)
        var = 0.0
        cnt = torch.zeros(F)
        l0 = 0.0
        pl0 = torch.zeros(len(ends))
        with torch.no_grad():
            for x, y in heldout_batches(pair.heldout, io_mode, batch=4096):
                x, y = x.float(), y.float()
                acts = model.encode(x, mode=mode)
                for i in range(len(ends)):
                    r = model.decode(acts, i + 1).float() + (
                        model.skip(x).float() if getattr(model.cfg, "skip_connection", False) else 0
                    )
                    sse[i] += float((r - y).double().pow(2).sum())
                var += float((y - ymean).double().pow(2).sum())
                pos = acts.values > 0
                idx = acts.indices[pos]
                cnt += torch.bincount(idx, minlength=F).float()
                l0 += float(pos.sum())
                for i, e in enumerate(ends):
                    pl0[i] += float((idx < e).sum())
        dens = cnt / n
        starts = [0] + ends[:-1]
        out[mode] = {
            "fvu": [round(v, 4) for v in (sse / var).tolist()],
            "l0": round(l0 / n, 2),
            "prefix_l0": [round(v / n, 1) for v in pl0.tolist()],
            "dead": round(float((cnt == 0).float().mean()), 4),
            "dense50": int((dens > 0.5).sum()),
            "dense10": int((dens > 0.1).sum()),
            "maxdens": round(float(dens.max()), 3),
            "dead_per_group": [int((cnt[s:e] == 0).sum()) for s, e in zip(starts, ends)],
        }
    print("RESULT", json.dumps(out), flush=True)
    with open(os.environ.get("QOUT", "/work/exp/q.jsonl"), "a") as fh:
        fh.write(json.dumps(out) + "\n")


main()
