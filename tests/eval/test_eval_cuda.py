"""The evaluation pieces on a CUDA device give the CPU results (skipped without a GPU)."""

import pytest
import torch

from matryoshka_ext.eval.interp import CoactivationStats, decoder_redundancy
from matryoshka_ext.eval.metrics import FidelityStats, SparsityStats
from matryoshka_ext.eval.samples import TopActivationCollector
from matryoshka_ext.loaders import SparseTranscoder

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _tc(gen, activation, d=32, F=256, d_out=24):
    return SparseTranscoder(
        torch.randn(d, F, generator=gen) / 4,
        torch.randn(F, generator=gen) * 0.1,
        torch.randn(F, d_out, generator=gen) / 4,
        torch.randn(d_out, generator=gen),
        activation=activation,
        threshold=torch.rand(F, generator=gen) * 0.5 if activation == "jumprelu" else None,
        k=16 if activation in ("topk", "batchtopk") else None,
        prefix_ends=[32, 96, 256],
        name=activation,
    )


@pytest.mark.parametrize("activation", ["jumprelu", "relu", "topk", "batchtopk"])
def test_eval_pieces_match_cpu(activation, seed):
    gen = torch.Generator().manual_seed(seed)
    tc = _tc(gen, activation)
    B, T = 6, 40
    tokens = torch.randint(3, 100, (B, T), generator=gen)
    tokens[:, 0] = 2
    keep = tokens != 2
    x = torch.randn(int(keep.sum()), 32, generator=gen) * 2
    y = torch.randn(x.shape[0], 24, generator=gen) * 10 + 100
    results = {}
    for dev in ("cpu", "cuda"):
        t = tc.to(dev)
        xd, yd = x.to(dev), y.to(dev)
        recon, acts = t.reconstruct_prefixes(xd)
        fid, sp = FidelityStats(3, 24, device=dev), SparsityStats(256, t.ends, device=dev)
        fid.update(yd, recon)
        sp.update(acts)
        col = TopActivationCollector(256, top_n=5, window=(4, 2), device=dev)
        col.update(acts, tokens.to(dev), keep.to(dev).reshape(-1).nonzero().squeeze(1), torch.arange(B))
        co = CoactivationStats(256, 64, device=dev)
        co.update(acts)
        results[dev] = (
            recon.cpu(),
            fid.result(),
            sp.result(),
            col.result(),
            co.max_jaccard()[0],
            decoder_redundancy(t.W_dec)[0],
        )
    (rc, fc, sc, cc, jc, dc), (rg, fg, sg, cg, jg, dg) = results["cpu"], results["cuda"]
    torch.testing.assert_close(rg, rc, rtol=1e-4, atol=1e-3)
    for k in ("fvu", "mse", "cosine"):
        assert fg[k] == pytest.approx(fc[k], rel=1e-4), k
    assert sg["l0_mean"] == pytest.approx(sc["l0_mean"]) and sg["dead"] == sc["dead"]
    assert sg["l0_hist"] == sc["l0_hist"]
    torch.testing.assert_close(cg.top_values, cc.top_values, rtol=1e-5, atol=1e-5)
    assert torch.equal(cg.fire_count, cc.fire_count)
    torch.testing.assert_close(jg, jc)
    torch.testing.assert_close(dg, dc, rtol=1e-4, atol=1e-5)


def test_evaluate_on_cuda_tiny_model(seed):
    pytest.importorskip("transformer_lens")
    from matryoshka_ext.data.models import tiny_model
    from matryoshka_ext.data.sites import gemma_sites
    from matryoshka_ext.eval.evaluate import EvalConfig, evaluate

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 512, (4, 24), generator=gen)
    tokens[:, 0] = 2
    tc = _tc(gen, "topk", d=64, d_out=64)
    out = {}
    for dev in ("cpu", "cuda"):
        model = tiny_model(device=dev)
        cfg = EvalConfig(n_tokens=60, splice_tokens=30, batch_contexts=2)
        out[dev] = evaluate([tc.to(dev)], model, gemma_sites(1), tokens, cfg, exclude_token_ids=[2])
    pc, pg = out["cpu"]["transcoders"][0]["prefixes"], out["cuda"]["transcoders"][0]["prefixes"]
    for a, b in zip(pc, pg):
        for k in ("fvu", "l0_mean", "ce", "kl"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), k
