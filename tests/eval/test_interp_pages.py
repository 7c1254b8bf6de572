"""Hierarchy and latent pages on a small trained Matryoshka transcoder (tiny random Gemma-3 model, no download),
checked against brute force on the dense activations; the hierarchy also on a planted firing pattern; the page
size for 16k latents."""

import json
import re

import pytest
import torch

from matryoshka_ext.eval.browser import PageExtras, browser_html
from matryoshka_ext.eval.hierarchy import build_hierarchy, markdown_trees
from matryoshka_ext.eval.pages import histograms, logit_attribution, output_directions, quantile_contexts, scan
from matryoshka_ext.eval.samples import TopActivationCollector
from matryoshka_ext.sparse import SparseActs

LAYER, BOS = 1, 2


def test_hierarchy_on_planted_firing():
    # groups [0, 4) and [4, 8); latent 5 always fires with 1; 6 with 2 on 3 of 4 tokens, with 1 on 1; 7 alone
    fires = {0: [1, 5], 1: [1, 5], 2: [2, 6], 3: [2, 6], 4: [2, 6], 5: [1, 6], 6: [7], 7: [3], 8: [1]}
    rows = torch.tensor([r for r, ls in fires.items() for _ in ls])
    lats = torch.tensor([f for ls in fires.values() for f in ls])
    W = torch.eye(8)
    W[5] = W[1] + W[5]  # cos(5, 1) = 1/sqrt(2)
    h = build_hierarchy(rows, lats, 9, [4, 8], W)
    assert h.parent.tolist() == [-1, -1, -1, -1, -1, 1, 2, -1]
    assert abs(float(h.p_parent[5]) - 1.0) < 1e-6 and abs(float(h.p_parent[6]) - 0.75) < 1e-6
    assert abs(float(h.p_child[5]) - 2 / 4) < 1e-6  # latent 1 fires on 4 tokens, 2 of them with 5
    assert abs(float(h.parent_cos[5]) - 2**-0.5) < 1e-6 and abs(float(h.parent_cos[6])) < 1e-6
    assert h.children(1) == [5] and h.children(2) == [6]
    assert abs(float(h.lift[5]) - 1.0 / (4 / 9)) < 1e-5  # P(1 | 5) / P(1)
    g2 = h.group_summary()[1]
    assert g2["with_parent"] == 2 and abs(g2["mean_p_parent"] - 0.875) < 1e-6 and g2["live"] == 3


@pytest.fixture(scope="module")
def trained():
    """A tiny Gemma-3 model and a 96-latent Matryoshka transcoder (groups 16/32/48) trained 60 steps on it."""
    pytest.importorskip("transformer_lens")
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.data.models import tiny_model
    from matryoshka_ext.loaders.base import MatryoshkaAdapter
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    torch.manual_seed(0)
    lm = tiny_model("gemma3", n_layers=2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 512, (48, 32), generator=g)
    tokens[:, 0] = BOS
    hooks = [f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"]
    with torch.no_grad():
        _, cache = lm.run_with_cache(tokens, names_filter=hooks)
    x, y = cache[hooks[0]][:, 1:].reshape(-1, 64), cache[hooks[1]][:, 1:].reshape(-1, 64)
    cfg = TranscoderConfig(d_in=64, d_out=64, dict_size=96, group_sizes=[16, 32, 48], k=8, aux_k=16, dead_tokens=512)
    m = MatryoshkaTranscoder(cfg)
    m.initialize_from_batch(x, y)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(60):
        idx = torch.randint(0, len(x), (256,), generator=g)
        out = m(x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        m.project_decoder_grad()
        opt.step()
        m.normalize_decoder()
    m.eval()
    from matryoshka_ext.data.sites import gemma_sites

    return lm, MatryoshkaAdapter(m, name="tiny"), gemma_sites(LAYER), tokens, x


def test_scan_pages_and_hierarchy_match_brute_force(trained):
    lm, tc, sites, tokens, x = trained
    rec, samples = scan(tc, lm, sites, tokens, n_tokens=10_000, top_n=4, window=(3, 1), exclude_token_ids=[BOS])
    dense = tc.encode(x).to_dense().detach().float()  # rows in the same order: kept tokens, context by context
    assert rec.n_rows == len(x) == samples.n_tokens
    got = torch.zeros_like(dense)
    got[rec.rows, rec.latents] = rec.values
    torch.testing.assert_close(got, dense * (dense > 0))
    # histograms: every nonzero activation counted once, in the bin of its value
    hist, mx = histograms(rec, bins=8)
    assert torch.equal(hist.sum(1), samples.fire_count)
    torch.testing.assert_close(mx, dense.clamp_min(0).max(0).values)
    f = int(samples.fire_count.argmax())
    v = dense[:, f][dense[:, f] > 0]
    expect = torch.bincount((v / mx[f] * 8).long().clamp(max=7), minlength=8)
    assert torch.equal(hist[f], expect)
    # quantile contexts: values inside their interval, the centre token carries that value
    q = quantile_contexts(rec, [f], intervals=4, per_interval=2, window=(3, 1))[f]
    assert [iv["q"] for iv in q] == [0, 1, 2, 3]
    sv = v.sort().values
    n = len(sv)
    for iv in q:
        assert abs(iv["lo"] - float(sv[(n * iv["q"]) // 4])) < 1e-6
        for val, ids, acts, center in iv["contexts"]:
            assert iv["lo"] - 1e-6 <= val <= iv["hi"] + 1e-6 and abs(acts[center] - val) < 1e-4
            row = int(((dense[:, f] - val).abs() < 1e-6).nonzero()[0])
            assert ids[center] == int(tokens[:, 1:].reshape(-1)[row])
    # direct logit attribution against (W_dec[f] * g) @ W_U
    W_out = output_directions(tc)
    ti, tv, bi, bv = logit_attribution(W_out, lm, n=5, chunk=7)
    eff = (W_out[f] * lm.ln_final.w) @ lm.W_U
    torch.testing.assert_close(tv[f], eff.topk(5).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bv[f], -(-eff).topk(5).values, rtol=1e-5, atol=1e-5)
    # hierarchy against the dense firing matrix
    h = build_hierarchy(rec.rows, rec.latents, rec.n_rows, tc.ends, tc.decoder_weights())
    Bm = (dense > 0).float()
    co = Bm.T @ Bm
    n_checked = 0
    for c in range(16, 96):
        start = 16 if c < 48 else 48
        if Bm[:, c].sum() == 0 or co[c, :start].max() == 0:
            assert int(h.parent[c]) == -1
            continue
        best = co[c, :start]
        p = int(h.parent[c])
        assert best[p] == best.max() and p == int((best == best.max()).nonzero()[0])
        assert abs(float(h.p_parent[c]) - float(best.max() / Bm[:, c].sum())) < 1e-6
        n_checked += 1
    assert n_checked > 20
    assert "# Latent hierarchy" in markdown_trees(h, samples)


def _synthetic_pages(F: int, ends: list[int], seed: int = 0):
    """A SampleSet and PageExtras for F latents (random firing), as interp would build them."""
    g = torch.Generator().manual_seed(seed)
    B, T = 64, 64
    tokens = torch.randint(3, 3000, (B, T), generator=g)
    tokens[:, 0] = BOS
    keep = tokens != BOS
    R = int(keep.sum())
    rows = torch.arange(R).repeat_interleave(16)
    lats = torch.randint(0, F, (R * 16,), generator=g)
    key = torch.unique(rows * F + lats)
    rows, lats = key // F, key % F
    vals = torch.rand(len(rows), generator=g) + 0.01
    acts = SparseActs(vals, lats, torch.searchsorted(rows, torch.arange(R + 1)), F)
    col = TopActivationCollector(F, top_n=8, window=(16, 4))
    col.update(acts, tokens, keep.reshape(-1).nonzero().squeeze(1), torch.arange(B))
    vocab = {str(i): f"tok{i}" for i in range(3000)}
    samples = col.result(ends, {"name": "synthetic", "vocab": vocab})
    from matryoshka_ext.eval.pages import ActivationRecord

    rec = ActivationRecord(rows, lats, vals, keep.reshape(-1).nonzero().squeeze(1), tokens, F)
    hist, mx = histograms(rec, 24)
    n = 10
    dla = (
        torch.randint(0, 3000, (F, n), generator=g),
        torch.rand(F, n, generator=g),
        torch.randint(0, 3000, (F, n), generator=g),
        -torch.rand(F, n, generator=g),
    )
    from matryoshka_ext.eval.browser import choose_browser_latents

    chosen = choose_browser_latents(samples, 4000)
    quant = quantile_contexts(rec, chosen, 4, 2, window=(12, 4))
    h = build_hierarchy(rows, lats, R, ends, torch.randn(F, 32, generator=g))
    extras = PageExtras(hist=hist, hist_max=mx, dla=dla, quantiles=quant, hierarchy=h, vocab={})
    return samples, extras


def test_browser_with_16k_latents_stays_small():
    F = 16_384
    samples, extras = _synthetic_pages(F, [1024, 4096, F])
    page = browser_html(samples, max_latents=4000, contexts_per_latent=8, extras=extras)
    mb = len(page.encode()) / 2**20
    print(f"\n16k-latent browser: {mb:.1f} MB")
    assert mb < 20
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    X = data["extras"]
    assert len(X["hist"]) == F and len(X["dla"]["pos"]) == F and len(X["hier"]["parent"]) == F
    assert 3000 <= len(X["quant"]) <= 4000 + 15 and len(data["contexts"]) == len(X["quant"])
