"""float64 gradcheck through the public ops and torch.library.opcheck on every registered op."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops

from .problems import problem, randint, random_groups


def _small(seed_mode="row"):
    F = randint(4, 12)
    return problem(randint(1, 4), randint(1, 4), randint(1, 4), F, randint(1, F), dtype=torch.float64)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_gradcheck_encode_then_nested_mse(seed, mode):
    p = _small()
    w = torch.rand(len(p.ends), dtype=torch.float64)

    def f(x, W_enc, b_enc, W_dec, b_dec, target):
        acts = mx.encode(x, W_enc, b_enc, p.k, mode)
        return (mx.nested_mse(acts, W_dec, b_dec, target, p.ends) * w).sum()

    assert torch.autograd.gradcheck(f, tuple(p.leaves()), eps=1e-6, atol=1e-5)


def test_gradcheck_nested_decode(seed):
    p = _small()
    acts = mx.encode(p.x, p.W_enc, p.b_enc, p.k, "row").detach()
    values = acts.values.clone().requires_grad_()

    def f(values, W_dec, b_dec):
        return mx.nested_decode(mx.SparseActs(values, acts.indices, acts.row_offsets, acts.num_latents), W_dec,
                                b_dec, p.ends)

    assert torch.autograd.gradcheck(f, (values, p.W_dec, p.b_dec), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("op", ["topk", "batch_topk"])
def test_gradcheck_selection(seed, op):
    pre = torch.randn(randint(1, 4), randint(2, 9), dtype=torch.float64, requires_grad=True)
    k = randint(1, pre.shape[1])
    assert torch.autograd.gradcheck(lambda t: getattr(mx, op)(t, k).values, (pre,), eps=1e-6, atol=1e-5)


def _opcheck_samples():
    p = problem(5, 6, 7, 23, 4, dtype=torch.float32, ends=random_groups(23, 3))
    x, We, be, Wd, bd, y = p.leaves()
    acts = mx.encode(x, We, be, p.k, "row")
    v, i, r = acts.values.detach().requires_grad_(), acts.indices, acts.row_offsets
    S = torch.randn(len(p.ends), 5, 7)
    yield "topk_select", (x.detach().mm(We.detach()).requires_grad_(), 4)
    yield "batch_topk_select", (x.detach().mm(We.detach()).requires_grad_(), 4)
    yield "encode", (x, We, be, 4, True)
    yield "encode", (x, We, be, 4, False)
    dead = torch.tensor([0, 3, 4, 9, 17, 22])
    yield "encode_aux", (x, We, be, 4, True, dead, 3)
    yield "encode_aux", (x, We, be, 4, False, dead, 6)
    yield "nested_decode", (v, i, r, Wd, bd, p.ends)
    yield "nested_decode", (v, i, r, Wd, None, p.ends)
    yield "nested_mse", (v, i, r, Wd, bd, y, p.ends)
    yield "nested_mse_backward", (torch.rand(len(p.ends)), v.detach(), i, r, Wd.detach(), bd.detach(),
                                  y.detach(), p.ends)
    yield "nested_mse_backward_dot", (torch.rand(len(p.ends)), v.detach(), i, r, Wd.detach(), bd.detach(),
                                      y.detach(), p.ends)
    yield "grouped_dot", (S, i, r, Wd.detach(), p.ends)
    yield "latent_grad", (S, v.detach(), i, r, p.ends, 23, torch.float32)
    yield "latent_grad", (S, v.detach(), i, r, p.ends, 23, torch.float32, True)


@pytest.mark.parametrize("name,args", list(_opcheck_samples()), ids=lambda a: a if isinstance(a, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)
