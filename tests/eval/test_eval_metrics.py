"""Metric definitions against independent numpy computations on synthetic data with known answers."""

import math

import numpy as np
import pytest
import torch

from matryoshka_ext.eval.interp import CoactivationStats, decoder_redundancy
from matryoshka_ext.eval.metrics import FidelityStats, SparsityStats, _hist_mean_median
from matryoshka_ext.sparse import SparseActs


def test_fidelity_streaming_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    N, d, m = 1000, 16, 3
    # a large mean and per-dimension scales: a global-variance FVU or E[y^2]-E[y]^2 would both be off
    y = rng.standard_normal((N, d)) * rng.uniform(0.1, 5, d) + rng.uniform(2000.0, 4000.0, d)
    noise = [0.9, 0.3, 0.05]
    r = np.stack([y + rng.standard_normal((N, d)) * s * y.std(0) for s in noise])
    r[0, 5] = 0.0  # a zero reconstruction: cosine 0 for that token
    st = FidelityStats(m, d)
    for a, b in ((0, 1), (1, 300), (300, 301), (301, 1000)):  # uneven batches, incl. single rows
        st.update(torch.from_numpy(y[a:b]).float(), torch.from_numpy(r[:, a:b]).float())
    res = st.result()
    y32, r32 = y.astype(np.float32).astype(np.float64), r.astype(np.float32).astype(np.float64)
    sse = ((r32 - y32) ** 2).sum(axis=(1, 2))
    var_per_dim = y32.var(axis=0)  # population variance of each dimension
    np.testing.assert_allclose(res["mse"], sse / (N * d), rtol=1e-10)
    np.testing.assert_allclose(res["fvu"], sse / (N * var_per_dim.sum()), rtol=1e-8)
    np.testing.assert_allclose(res["explained_variance"], 1 - sse / (N * var_per_dim.sum()), rtol=1e-8)
    np.testing.assert_allclose(res["nmse"], sse / (y32**2).sum(), rtol=1e-10)
    nr = np.linalg.norm(r32, axis=2)
    cos = np.where(nr > 0, (r32 * y32).sum(2) / np.maximum(nr * np.linalg.norm(y32, axis=1), 1e-300), 0.0)
    np.testing.assert_allclose(res["cosine"], cos.mean(1), rtol=1e-10)
    assert res["n_tokens"] == N
    assert res["fvu"][2] < res["fvu"][1] < res["fvu"][0]
    # the per-dimension definition differs from a single global variance here
    assert not math.isclose(res["fvu"][1], sse[1] / ((y32 - y32.mean()) ** 2).sum(), rel_tol=1e-2)


def test_fvu_known_answers():
    y = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 40.0], [7.0, 40.0]])
    mean_pred = y.mean(0, keepdim=True).expand_as(y)
    st = FidelityStats(2, 2)
    st.update(y, torch.stack([mean_pred, y]))
    res = st.result()
    assert res["fvu"] == pytest.approx([1.0, 0.0])  # predicting the mean explains nothing; exact explains all
    assert res["cosine"][1] == pytest.approx(1.0)


def _acts_from_dense(d: np.ndarray) -> SparseActs:
    return SparseActs.from_dense(torch.from_numpy(d).float())


def test_sparsity_streaming_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    N, F, ends = 600, 40, [8, 16, 40]
    dense = rng.random((N, F)) * (rng.random((N, F)) < rng.uniform(0.05, 0.3, F))
    dense[:, 3] = 0.0  # dead
    dense[:, 20] = 0.0
    dense[:, 30] = rng.random(N) + 0.1  # dense: fires on every token
    dense[:, 31] = np.where(np.arange(N) % 4 == 0, 1.0, 0.0)  # exactly 25 %
    st = SparsityStats(F, ends, dense_threshold=0.2)
    for a, b in ((0, 250), (250, 251), (251, 600)):
        st.update(_acts_from_dense(dense[a:b]))
    res = st.result()
    fired = dense > 0
    for i, e in enumerate(ends):
        l0 = fired[:, :e].sum(1)
        assert res["l0_mean"][i] == pytest.approx(l0.mean())
        assert res["l0_median"][i] == np.median(l0)
    assert res["l0_hist"] == np.bincount(fired.sum(1)).tolist()
    density = fired.mean(0)
    assert res["dead"] == int((density == 0).sum()) and res["dead"] >= 2
    assert res["dense"] == int((density > 0.2).sum()) and res["dense"] >= 2
    spans = ((0, 8), (8, 16), (16, 40))
    assert [g["dead"] for g in res["groups"]] == [int((density[a:b] == 0).sum()) for a, b in spans]
    assert [g["l0_mean"] for g in res["groups"]] == pytest.approx([fired[:, a:b].sum(1).mean() for a, b in spans])
    live = density[density > 0]
    edges = np.arange(-7, 1)
    expected = np.bincount(np.searchsorted(edges, np.log10(live), side="right"), minlength=len(edges) + 1)
    assert res["density_hist"]["counts"] == expected.tolist()
    assert sum(res["density_hist"]["counts"]) + res["density_hist"]["dead"] == F
    assert res["max_activation"] == pytest.approx(dense.max(), rel=1e-6)
    # stored zeros (TopK rows with fewer positives than k) do not count as firing
    z = SparseActs(torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0, 2]), F)
    st2 = SparsityStats(F)
    st2.update(z)
    assert st2.result()["l0_mean"] == [0.0] and st2.result()["dead"] == F


def test_hist_median():
    assert _hist_mean_median(torch.tensor([0, 2, 0, 1])) == pytest.approx((5 / 3, 1.0))
    assert _hist_mean_median(torch.tensor([1, 1, 1, 1]))[1] == 1.5  # values 0,1,2,3
    assert math.isnan(_hist_mean_median(torch.tensor([0, 0]))[1])


def test_decoder_redundancy_and_coactivation(seed):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(50, 8, generator=gen)
    W[7] = 2.5 * W[41]  # a duplicate direction
    best, partner = decoder_redundancy(W, chunk=16)
    Wn = W / W.norm(dim=1, keepdim=True)
    S = Wn @ Wn.T
    S.fill_diagonal_(-2)
    torch.testing.assert_close(best, S.max(1).values, rtol=1e-5, atol=1e-6)
    assert int(partner[7]) == 41 and best[7] == pytest.approx(1.0, abs=1e-5)
    rng = np.random.default_rng(seed)
    dense = (rng.random((300, 20)) < 0.2).astype(np.float64)
    dense[:, 5] = dense[:, 2]  # always co-fire
    dense[:, 9] = 0.0
    cs = CoactivationStats(20, max_latents=12)
    cs.update(_acts_from_dense(dense[:100]))
    cs.update(_acts_from_dense(dense[100:]))
    v, i = cs.max_jaccard()
    assert v.shape == (12,) and int(i[2]) == 5 and v[2] == pytest.approx(1.0) and int(i[9]) == -1
    b = dense[:, :12] > 0
    inter = (b[:, :, None] & b[:, None, :]).sum(0)
    union = (b[:, :, None] | b[:, None, :]).sum(0)
    jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.fill_diagonal(jac, -1)
    np.testing.assert_allclose(v.numpy(), np.maximum(jac.max(1), 0), rtol=1e-6)
