"""Bad input on CUDA (runs last: a crash here must not hide other results). Argument errors raise the same
named Python errors as on the CPU; CSR content that only a device sync could check (indices out of range,
broken row_offsets) is guarded inside the kernels: no out-of-bounds access, the CUDA context stays healthy."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops

from ._util import DEVICE, ON_GPU, needs_device, sync

pytestmark = [pytest.mark.cuda, needs_device]


def c(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def L(values):
    return torch.tensor(values, dtype=torch.long, device=DEVICE)


def _acts(N=4, F=10, k=3):
    return mx.topk(c(N, F), k)


CASES = [
    (lambda: mx.topk(c(4, 10), 0), ValueError, "k must"),
    (lambda: mx.topk(c(4, 10), 11), ValueError, "k must"),
    (lambda: mx.batch_topk(c(4, 10), -1), ValueError, "k must"),
    (lambda: mx.topk(c(10), 2), ValueError, "pre must be 2-D"),
    (lambda: mx.topk(c(0, 10), 2), ValueError, "empty batch"),
    (lambda: mx.batch_topk(c(0, 10), 2), ValueError, "empty batch"),
    (lambda: mx.topk(torch.randint(0, 5, (4, 10), device=DEVICE), 2), TypeError, "pre must be float"),
    (lambda: mx.encode(c(4, 5), c(6, 10), c(10), 2), ValueError, "W_enc"),
    (lambda: mx.encode(c(4, 5), c(5, 10), c(9), 2), ValueError, "b_enc"),
    (lambda: mx.encode(c(4, 5), c(5, 10, dtype=torch.float64), c(10), 2), TypeError, "W_enc"),
    (lambda: mx.encode(c(4, 5), c(5, 10), c(10), 11), ValueError, "k must"),
    (lambda: ops.encode(c(4, 5), c(5, 10).cpu(), c(10), 2, False), ValueError, "same device"),
    (lambda: mx.nested_decode(_acts(), c(10, 6), c(6), [3, 3, 10]), ValueError, "group_ends"),
    (lambda: mx.nested_decode(_acts(), c(10, 6), c(6), [3, 9]), ValueError, "group_ends must end"),
    (lambda: mx.nested_decode(_acts(), c(10, 6, dtype=torch.float64), c(6), [10]), TypeError, "W_dec"),
    (lambda: mx.nested_decode(_acts(), c(10, 6), c(5), [10]), ValueError, "b_dec"),
    (lambda: mx.nested_mse(_acts(), c(10, 6), c(6), c(5, 6), [10]), ValueError, "target"),
    (
        lambda: ops.nested_decode(c(2), L([0, 1]).int(), L([0, 1, 2]), c(10, 6), c(6), [10]),
        TypeError,
        "indices must be int64",
    ),
    (
        lambda: ops.nested_decode(c(2), L([0, 1, 2]), L([0, 1, 2]), c(10, 6), c(6), [10]),
        ValueError,
        "indices must have",
    ),
    (
        lambda: ops.nested_decode(c(2), L([0, 1]), L([0, 1, 2]), c(10, 6).cpu(), None, [10]),
        ValueError,
        "same device",
    ),
    (
        lambda: ops.nested_mse_backward(c(3), c(2), L([0, 1]), L([0, 1, 2]), c(10, 6), c(6), c(2, 6), [10]),
        ValueError,
        "grad_loss",
    ),
    (
        lambda: ops.grouped_dot(c(2, 2, 6), L([0, 1]), L([0, 1, 2]), c(10, 6), [10]),
        ValueError,
        "S must have shape",
    ),
    (
        lambda: ops.latent_grad(c(1, 3, 6), c(2), L([0, 1]), L([0, 1, 2]), [10], 10, torch.float32),
        ValueError,
        "S must have shape",
    ),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_invalid_arguments_raise_named_errors(i):
    fn, exc, text = CASES[i]
    if text == "same device" and not ON_GPU:
        pytest.skip("needs two devices")
    with pytest.raises(exc, match=text):
        fn()
    sync()


BAD_INDICES = [[0, 10, -1, 2**40, 3, -(2**40)], [9, 9, 9, 0, 0, 0], [11, 12, 13, 14, 15, 16]]
BAD_OFFSETS = [[0, 2, 4, 6], [0, 5, 2, 6], [-3, 2, 100, 6], [0, 6, 6, 1000], [6, 0, 3, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bad_csr_content_is_guarded(dtype):
    F, d, N, nnz = 10, 12, 3, 6
    W, b, y = c(F, d, dtype=dtype), c(d, dtype=dtype), c(N, d, dtype=dtype)
    values = c(nnz, dtype=dtype)
    acc = torch.float32
    for idx in BAD_INDICES:
        for ro in BAD_OFFSETS:
            i, r = L(idx), L(ro)
            ends = [4, F]
            S = c(2, N, d)
            ops.nested_decode(values, i, r, W, b, ends)
            ops.nested_decode(values, i, r, W, None, [F])
            ops.nested_mse(values, i, r, W, b, y, ends)
            ops.nested_mse_backward(torch.ones(2, device=DEVICE), values, i, r, W, b, y, ends)
            ops.grouped_dot(S, i, r, W, ends)
            ops.latent_grad(S, values, i, r, ends, F, dtype)
            ops.latent_grad(S.to(dtype), values, i, r, ends, F, acc)
            sync()  # an out-of-bounds access would surface here
    # The context is still healthy and results are still right.
    pre = c(8, 50)
    assert torch.equal(mx.topk(pre, 5).indices.cpu(), mx.topk(pre.cpu(), 5).indices)
