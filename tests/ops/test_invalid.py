"""Invalid input raises a Python exception naming the argument, in-process, without crashing."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops


def _acts(N=4, F=10, k=3):
    return mx.topk(torch.randn(N, F), k)


W, b, y = torch.randn(10, 6), torch.randn(6), torch.randn(4, 6)

CASES = [
    # (callable, exception type, substring of the message)
    (lambda: mx.topk(torch.randn(4, 10), 0), ValueError, "k must"),
    (lambda: mx.topk(torch.randn(4, 10), 11), ValueError, "k must"),
    (lambda: mx.batch_topk(torch.randn(4, 10), -1), ValueError, "k must"),
    (lambda: mx.topk(torch.randn(10), 2), ValueError, "pre must be 2-D"),
    (lambda: mx.topk(torch.randn(0, 10), 2), ValueError, "empty batch"),
    (lambda: mx.batch_topk(torch.randn(0, 10), 2), ValueError, "empty batch"),
    (lambda: mx.topk(torch.randint(0, 5, (4, 10)), 2), TypeError, "pre must be float"),
    (lambda: mx.encode(torch.randn(4, 5), torch.randn(6, 10), torch.randn(10), 2), ValueError, "W_enc"),
    (lambda: mx.encode(torch.randn(4, 5), torch.randn(5, 10), torch.randn(9), 2), ValueError, "b_enc"),
    (lambda: mx.encode(torch.randn(4, 5), torch.randn(5, 10).double(), torch.randn(10), 2), TypeError, "W_enc"),
    (lambda: mx.encode(torch.randn(0, 5), torch.randn(5, 10), torch.randn(10), 2), ValueError, "empty batch"),
    (lambda: mx.encode(torch.randn(4, 5), torch.randn(5, 10), torch.randn(10), 2, mode="col"), ValueError, "mode"),
    (lambda: mx.encode(torch.randn(4, 5), torch.randn(5, 10), torch.randn(10), 11), ValueError, "k must"),
    (lambda: mx.nested_decode(_acts(), W, b, [3, 3, 10]), ValueError, "group_ends"),
    (lambda: mx.nested_decode(_acts(), W, b, [3, 9]), ValueError, "group_ends must end"),
    (lambda: mx.nested_decode(_acts(), W, b, []), ValueError, "group_ends"),
    (lambda: mx.nested_decode(_acts(), W, b, [0, 10]), ValueError, "group_ends"),
    (lambda: mx.nested_decode(_acts(), W, b, "abc"), TypeError, "group_ends"),
    (lambda: mx.nested_decode(_acts(), W[:, :3], b, [10]), ValueError, "b_dec"),
    (lambda: mx.nested_decode(_acts(), W[:, :3].t(), b, [10]), ValueError, "W_dec must have acts.num_latents"),
    (lambda: mx.nested_decode(_acts(), W.double(), b, [10]), TypeError, "W_dec"),
    (lambda: mx.nested_decode(_acts(), W, torch.randn(5), [10]), ValueError, "b_dec"),
    (lambda: mx.nested_decode(torch.randn(4, 10), W, b, [10]), TypeError, "acts"),
    (lambda: mx.nested_mse(_acts(), W, b, torch.randn(5, 6), [10]), ValueError, "target"),
    (lambda: mx.nested_mse(_acts(), W, b, torch.randn(4, 7), [10]), ValueError, "target"),
    (lambda: mx.nested_mse(_acts(N=4, F=12), W, b, y, [10]), ValueError, "W_dec must have acts.num_latents = 12"),
    # Hand-made CSR that lies about its content: out-of-range index, broken offsets, length mismatch.
    (lambda: ops.nested_decode(torch.ones(2), torch.tensor([0, 10]), torch.tensor([0, 1, 2]), W, b, [10]),
     ValueError, "indices must lie"),
    (lambda: ops.nested_decode(torch.ones(2), torch.tensor([0, -1]), torch.tensor([0, 1, 2]), W, b, [10]),
     ValueError, "indices must lie"),
    (lambda: ops.nested_mse(torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 2, 1]), W, b, y[:2], [10]),
     ValueError, "row_offsets"),
    (lambda: ops.nested_decode(torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 1, 5]), W, b, [10]),
     ValueError, "row_offsets"),
    (lambda: ops.nested_decode(torch.ones(2), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), W, b, [10]),
     ValueError, "indices must have"),
    (lambda: ops.nested_decode(torch.ones(2), torch.tensor([0, 1]).int(), torch.tensor([0, 1, 2]), W, b, [10]),
     TypeError, "indices must be int64"),
    (lambda: ops.nested_decode(torch.ones(0), torch.zeros(0).long(), torch.tensor([0]), W, b, [10]),
     ValueError, "empty batch"),
    (lambda: ops.latent_grad(torch.randn(1, 2, 6), torch.ones(2), torch.tensor([0, 99]), torch.tensor([0, 1, 2]),
                             [10], 10, torch.float32), ValueError, "indices must lie"),
    (lambda: ops.grouped_dot(torch.randn(2, 2, 6), torch.tensor([0, 1]), torch.tensor([0, 1, 2]), W, [10]),
     ValueError, "S must have shape"),
    (lambda: ops.nested_mse_backward_dot(torch.ones(1), torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 1, 2]),
                                         W, b, torch.randn(3, 6), [10]), ValueError, "target must have shape"),
    (lambda: ops.latent_grad(torch.randn(1, 2, 6), torch.ones(2), torch.tensor([0, 1]), torch.tensor([0, 1, 2]),
                             [10], 10, torch.int64, True), TypeError, "dtype"),
    (lambda: mx.SparseActs(torch.ones(2), torch.tensor([0, 10]), torch.tensor([0, 1, 2]), 10).validate(),
     ValueError, "acts.indices out of range"),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_invalid_input_raises_named_error(i):
    fn, exc, text = CASES[i]
    with pytest.raises(exc, match=text):
        fn()


def test_device_mismatch_is_named():
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="W_dec is on"):
        mx.nested_decode(_acts(), W.to(other), b, [10])
    with pytest.raises(ValueError, match="target is on"):
        mx.nested_mse(_acts(), W, b, y.to(other), [10])
    with pytest.raises(ValueError, match="b_enc is on"):
        mx.encode(torch.randn(4, 5), torch.randn(5, 10), torch.randn(10, device=other), 2)
