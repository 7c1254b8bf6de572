"""CUDA TopK / BatchTopK: bit-identical to the CPU kernels and the reference (ties, NaN, zeros, big rows)."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

from ._util import DEVICE, DTYPES, gpu_only, make_pre, needs_device, randint, same_selection

pytestmark = [pytest.mark.cuda, needs_device]

OPS = ["topk", "batch_topk"]
KINDS = ["randn", "ties", "negative", "nan_inf", "zeros", "heavy"]


@gpu_only
def test_cuda_kernels_are_compiled():
    # A GPU without the CUDA kernels is a build failure, not a skip.
    assert mx.has_cuda_kernels()


def _check(op: str, pre: torch.Tensor, k: int) -> None:
    """CUDA result == CPU kernel == reference (computed on the CPU copy)."""
    cpu = pre.cpu()
    got = getattr(mx, op)(pre.to(DEVICE), k)
    assert got.values.device.type == DEVICE and got.values.dtype == pre.dtype
    assert got.indices.dtype == torch.int64 and got.row_offsets.dtype == torch.int64
    what = f"{op} N={pre.shape[0]} F={pre.shape[1]} k={k} {pre.dtype}"
    same_selection(got, getattr(mx, op)(cpu, k), what + " vs CPU kernel")
    same_selection(got, getattr(ref, op)(cpu, k), what + " vs reference")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_random_shapes_and_data(seed, op, dtype):
    for i in range(12):
        N, F = randint(1, 40), randint(1, 3000)
        k = [1, F, randint(1, F)][i % 3]
        _check(op, make_pre(KINDS[i % len(KINDS)], N, F, dtype), k)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "N,F,k",
    [
        (1, 1, 1),
        (1, 7, 7),
        (5, 9, 1),
        (3, 129, 129),
        (2, 131072, 1024),  # the largest rows we promise, k at its cap
        (3, 100003, 777),  # odd F: rows not 16-byte aligned (scalar loads)
        (2, 20000, 20000),  # k = F on a long row
        (4, 8193, 5000),  # more kept than fit in shared memory
        (257, 4099, 17),
    ],
)
def test_edge_shapes(seed, op, N, F, k):
    for dtype in (torch.float32, torch.bfloat16):
        _check(op, make_pre("randn", N, F, dtype), k)


@pytest.mark.parametrize("op", OPS)
def test_ties_at_threshold_on_long_rows(seed, op):
    # Every value equal: the threshold bin holds the whole row (global path), ties go to the lowest indices.
    pre = torch.ones(3, 10000)
    _check(op, pre, 300)
    # Few positives, the rest tie at zero.
    pre = -torch.rand(4, 9000)
    pre[0, 17] = 2.0
    pre[2, 8999] = 1.0
    _check(op, pre, 64)
    # A small set of values over a long row.
    _check(op, make_pre("ties", 6, 50000, torch.bfloat16), 1000)


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_input(seed, op):
    base = torch.randn(3000, 70, device=DEVICE)
    pre = base.t()
    assert not pre.is_contiguous()
    got = getattr(mx, op)(pre, 11)
    same_selection(got, getattr(ref, op)(pre.contiguous().cpu(), 11))


def test_batch_topk_counts_and_order(seed):
    N, F, k = 300, 5000, 13
    pre = (torch.randn(N, F) * (torch.rand(N, 1) * 4)).to(DEVICE)  # uneven per-row counts
    acts = mx.batch_topk(pre, k)
    assert acts.nnz == k * N
    counts = acts.row_offsets.diff()
    assert int(counts.sum()) == k * N and bool((counts >= 0).all())
    for r in range(0, N, 37):
        row = acts.indices[acts.row_offsets[r] : acts.row_offsets[r + 1]]
        assert bool((row.diff() > 0).all())


def test_selection_backward_on_cuda(seed):
    pre = torch.randn(6, 300, device=DEVICE, requires_grad=True)
    for op in OPS:
        acts = getattr(mx, op)(pre, 5)
        g = torch.randn_like(acts.values)
        (grad,) = torch.autograd.grad(acts.values, pre, g)
        dense = torch.zeros(6 * 300, device=DEVICE)
        dense[acts.row_ids() * 300 + acts.indices] = g * (acts.values > 0)
        assert torch.equal(grad.flatten(), dense)
