"""The ops trace under torch.compile (fake kernels + registered autograd) and give the eager results."""

import pytest
import torch

import matryoshka_ext as mx

from .problems import random_problem


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_torch_compile_matches_eager(seed, mode):
    p = random_problem(torch.float32)

    def step(x, W_enc, b_enc, W_dec, b_dec, target):
        acts = mx.encode(x, W_enc, b_enc, p.k, mode)
        return mx.nested_mse(acts, W_dec, b_dec, target, p.ends).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_loss = step(*p.leaves())
    eager_grads = torch.autograd.grad(eager_loss, p.leaves())
    loss = compiled(*p.leaves())
    grads = torch.autograd.grad(loss, p.leaves())
    torch.testing.assert_close(loss, eager_loss)
    for u, v in zip(grads, eager_grads):
        torch.testing.assert_close(u, v)
