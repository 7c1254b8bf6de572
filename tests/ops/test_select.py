"""TopK / BatchTopK selection: exact agreement with the reference, the tie rule, counts, layouts."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

from .problems import randint, same_selection

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["topk", "batch_topk"])
def test_matches_reference_random_shapes(seed, dtype, op):
    for _ in range(8):
        N, F = randint(1, 60), randint(1, 500)
        k = randint(1, F)
        pre = torch.randn(N, F, dtype=torch.float64).to(dtype)
        same_selection(getattr(mx, op)(pre, k), getattr(ref, op)(pre, k))


@pytest.mark.parametrize("op", ["topk", "batch_topk"])
@pytest.mark.parametrize("N,F,k", [(1, 1, 1), (1, 7, 7), (5, 9, 1), (3, 129, 129), (17, 1000, 3)])
def test_edge_shapes(seed, op, N, F, k):
    pre = torch.randn(N, F)
    same_selection(getattr(mx, op)(pre, k), getattr(ref, op)(pre, k))


@pytest.mark.parametrize("op", ["topk", "batch_topk"])
def test_ties_go_to_lower_index(seed, op):
    # Values from a tiny set force many ties, including at the threshold; negatives make zeros tie too.
    N, F = randint(2, 40), randint(5, 200)
    pre = torch.randint(-2, 3, (N, F)).float()
    for k in (1, randint(1, F), F):
        ours, oracle = getattr(mx, op)(pre, k), getattr(ref, op)(pre, k)
        same_selection(ours, oracle)


def test_batch_topk_keeps_exactly_k_times_n(seed):
    N, F = randint(2, 50), randint(10, 300)
    k = randint(1, F)
    pre = torch.randn(N, F) * (torch.rand(N, 1) * 4)  # rows of different scale: uneven per-row counts
    acts = mx.batch_topk(pre, k)
    assert acts.nnz == k * N
    counts = acts.row_offsets.diff()
    assert counts.sum() == k * N and (counts >= 0).all()
    # Everything kept is >= everything dropped.
    dense = torch.relu(pre)
    kept = torch.zeros_like(dense, dtype=torch.bool)
    kept[acts.row_ids(), acts.indices] = True
    if (~kept).any():
        assert dense[kept].min() >= dense[~kept].max()


def test_fewer_positives_than_k_stores_zeros(seed):
    F = randint(20, 100)
    pre = -torch.rand(4, F)
    pre[0, 3] = 1.5  # one positive in row 0
    acts = mx.topk(pre, 5)
    same_selection(acts, ref.topk(pre, 5))
    assert acts.nnz == 20 and int(acts.l0()[0]) == 1 and int(acts.l0()[1:].sum()) == 0
    assert (acts.values >= 0).all()


def test_indices_ascend_within_rows(seed):
    pre = torch.randn(randint(1, 30), randint(5, 400))
    for acts in (mx.topk(pre, 4), mx.batch_topk(pre, 4)):
        for r in range(acts.num_rows):
            row = acts.indices[acts.row_offsets[r] : acts.row_offsets[r + 1]]
            assert (row.diff() > 0).all()


def test_non_contiguous_input(seed):
    base = torch.randn(200, 60)
    pre = base.t()  # [60, 200], not contiguous
    assert not pre.is_contiguous()
    same_selection(mx.topk(pre, 7), ref.topk(pre.contiguous(), 7))
    same_selection(mx.batch_topk(pre, 7), ref.batch_topk(pre.contiguous(), 7))


def test_nan_ranks_highest_like_torch_sort(seed):
    pre = torch.randn(3, 50)
    pre[1, 10] = float("nan")
    for op in ("topk", "batch_topk"):
        ours, oracle = getattr(mx, op)(pre, 3), getattr(ref, op)(pre, 3)
        assert torch.equal(ours.indices, oracle.indices)
        assert torch.equal(ours.values, oracle.values, ) or torch.allclose(
            ours.values, oracle.values, equal_nan=True
        )


@pytest.mark.parametrize("op", ["topk", "batch_topk"])
def test_selection_backward_matches_reference(seed, op):
    pre = torch.randn(randint(1, 30), randint(3, 200), dtype=torch.float64, requires_grad=True)
    k = randint(1, pre.shape[1])
    gout = torch.randn(k * pre.shape[0], dtype=torch.float64)
    g1 = torch.autograd.grad((getattr(mx, op)(pre, k).values * gout).sum(), pre)[0]
    g2 = torch.autograd.grad((getattr(ref, op)(pre, k).values * gout).sum(), pre)[0]
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["gaussian", "row_scales", "hot_columns", "with_nan", "few_positive"])
def test_batch_topk_large_inputs_match_reference(seed, dtype, layout):
    """Inputs large enough for the sampled-threshold path (a sample of the entries, one candidate pass), with
    layouts that would bias a naive sample: rows and columns of very different scale, NaN, and fewer
    positives than k*N (the radix path takes over)."""
    N, F = randint(200, 400), randint(1500, 4000)
    k = randint(1, 64)
    pre = torch.randn(N, F, dtype=torch.float64)
    if layout == "row_scales":
        pre *= torch.rand(N, 1, dtype=torch.float64) ** 4 * 10
    elif layout == "hot_columns":  # a few columns carry most of the top values
        hot = torch.randperm(F)[: randint(1, 8)]
        pre[:, hot] += 6
    elif layout == "with_nan":
        pre.view(-1)[torch.randperm(N * F)[: randint(1, 50)]] = float("nan")
    elif layout == "few_positive":
        pre = -pre.abs()
        pre.view(-1)[torch.randperm(N * F)[: randint(1, N * k - 1)]] = 1.0
    pre = pre.to(dtype)
    ours, oracle = mx.batch_topk(pre, k), ref.batch_topk(pre, k)
    assert torch.equal(ours.indices, oracle.indices) and torch.equal(ours.row_offsets, oracle.row_offsets)
    torch.testing.assert_close(ours.values, oracle.values, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_heap_and_threshold_paths_agree_with_reference(seed, dtype):
    # The CPU kernel keeps a heap while k * 16 < F and selects by threshold (a bitwise search for the k-th key,
    # 16 keys per vector compare) from there on: check both sides of the switch with ties at the threshold, zeros,
    # negatives and NaN, on a row length that is a multiple of 16 and one that leaves a scalar tail.
    for F, ks in ((64, (1, 3, 4, 5, 17, 40, 63, 64)), (71, (1, 4, 5, 33, 70, 71))):
        _check_topk_paths(dtype, F, ks)


def _check_topk_paths(dtype: torch.dtype, F: int, ks: tuple[int, ...]) -> None:
    pre = torch.randint(-3, 4, (23, F)).to(dtype)
    pre[3, 5] = pre[7, 60] = float("nan")
    for k in ks:
        ours, oracle = mx.topk(pre, k), ref.topk(pre, k)
        assert torch.equal(ours.indices, oracle.indices) and torch.equal(ours.row_offsets, oracle.row_offsets)
        torch.testing.assert_close(ours.values, oracle.values, equal_nan=True, rtol=0, atol=0)
        x = torch.randn(23, F, dtype=torch.float64).to(dtype)
        same_selection(mx.topk(x, k), ref.topk(x, k))
