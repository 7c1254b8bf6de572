"""encode_aux (the encoder plus AuxK's selection over the dead columns from the same pre-activations) against
the reference: selections, AuxK-style losses and every gradient; float64 gradcheck; invalid arguments."""

from __future__ import annotations

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import ops as mx_ops
from matryoshka_ext import reference as ref

from .problems import TOL, problem, randint, same_selection

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _dead(F: int) -> torch.Tensor:
    """A random non-empty ascending set of latent ids in [0, F)."""
    n_dead = randint(1, F)
    return torch.randperm(F)[:n_dead].sort().values


def _run(encode_aux, p, mode, dead, aux_k, weights):
    """Both selections decoded (the main one nested, the aux one against the full W_dec with no bias, as AuxK
    does), a scalar loss using both, and the gradients of every encoder and decoder leaf."""
    acts, aux = encode_aux(p.x, p.W_enc, p.b_enc, p.k, mode, dead, aux_k)
    mse = mx.nested_mse(acts, p.W_dec, p.b_dec, p.target, p.ends)
    zero = torch.zeros_like(p.b_dec)
    aux_mse = mx.nested_mse(aux, p.W_dec, zero, p.target.detach() * 0.5, [p.W_dec.shape[0]])
    loss = (mse * weights.to(mse.dtype)).sum() + 0.7 * aux_mse.sum()
    leaves = [p.x, p.W_enc, p.b_enc, p.W_dec, p.b_dec]
    return acts, aux, loss, torch.autograd.grad(loss, leaves)


@pytest.fixture(params=["sparse", "dense"])
def aux_layout(request, monkeypatch):
    """The AuxK entries' encoder backward through the sparse kernels (ratio 0) or dense GEMMs (huge ratio)."""
    monkeypatch.setattr(mx_ops, "AUX_DENSE_RATIO", 0 if request.param == "sparse" else 10**9)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_parity_random(seed, dtype, mode, aux_layout):
    for _ in range(4):
        N, F = randint(1, 60), randint(1, 200)
        p = problem(N, randint(1, 30), randint(1, 30), F, randint(1, F), dtype=dtype)
        dead = _dead(F)
        aux_k = randint(1, dead.numel())
        w = torch.rand(len(p.ends), dtype=torch.float64).float() + 0.5
        a1, x1, l1, g1 = _run(mx_ops.encode_aux, p, mode, dead, aux_k, w)
        a2, x2, l2, g2 = _run(ref.encode_aux, p, mode, dead, aux_k, w)
        same_selection(a1, a2)
        same_selection(x1, x2)
        assert x1.num_latents == F and torch.isin(x1.indices, dead).all()
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(l1, l2, atol=atol, rtol=rtol)
        for name, u, v in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec"], g1, g2):
            scale = max(1.0, v.float().abs().max().item())
            torch.testing.assert_close(
                u.float(), v.float(), atol=atol * scale, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_aux_selection_equals_topk_of_gathered_columns(seed):
    # The definition AuxK had with a second GEMM: topk over pre[:, dead], mapped back to latent ids. Same
    # values bit for bit (the same GEMM output is read), ties at 0 included (aux_k above the positives).
    p = problem(37, 11, 5, 150, 6)
    pre = torch.addmm(p.b_enc, p.x, p.W_enc).detach()
    dead = _dead(150)
    aux_k = dead.numel()  # every dead column: most rows have zeros among them
    _, aux = mx_ops.encode_aux(p.x, p.W_enc, p.b_enc, p.k, "batch", dead, aux_k)
    sub = mx.topk(pre[:, dead], aux_k)
    assert torch.equal(aux.values, sub.values)
    assert torch.equal(aux.indices, dead[sub.indices])
    assert torch.equal(aux.row_offsets, sub.row_offsets)


@pytest.mark.parametrize("layout", ["many_rows", "few_positive"])
def test_batch_aux_selection_in_the_candidate_pass(seed, layout):
    # BatchTopK's sampled path hands each chunk of rows to AuxK's selection while it scans them; with fewer
    # positives than k*N the radix path runs instead and AuxK selects in a pass of its own. Both against the
    # reference top-k of the gathered dead columns.
    g = torch.Generator().manual_seed(seed)
    N, F, d = randint(200, 400), randint(1500, 3000), 8
    x = torch.randn(N, d, generator=g)
    W = torch.randn(d, F, generator=g) / d**0.5
    b = torch.zeros(F)
    if layout == "few_positive":
        b -= 10.0  # almost everything at or below zero
        b[torch.randperm(F, generator=g)[:3]] = 10.0
    dead = torch.sort(torch.randperm(F, generator=g)[: randint(50, 400)]).values
    k, aux_k = randint(4, 32), randint(1, 40)
    acts, aux = mx_ops.encode_aux(x, W, b, k, "batch", dead, aux_k)
    pre = torch.addmm(b, x, W)
    same_selection(acts, ref.batch_topk(pre, k))
    oracle = ref.topk(pre[:, dead], aux_k)
    assert torch.equal(aux.indices, dead[oracle.indices])
    assert torch.equal(aux.values, oracle.values)


def test_nan_in_dead_columns_ranks_first(seed):
    p = problem(4, 3, 2, 20, 2)
    b = p.b_enc.detach().clone()
    b[7] = float("nan")
    dead = torch.tensor([1, 7, 12])
    _, aux = mx_ops.encode_aux(p.x.detach(), p.W_enc.detach(), b, 2, "row", dead, 1)
    assert torch.equal(aux.indices, torch.full((4,), 7))
    assert aux.values.isnan().all()


def test_aux_selection_with_ties_nan_and_negatives_equals_reference(seed):
    # Integer-valued pre-activations (exact in float32): ties at the threshold, zeros, negatives and two NaN
    # columns among 33 dead ones (whole 8-wide gathers plus a tail on the CPU's vector path).
    g = torch.Generator().manual_seed(seed)
    N, F = 23, 97
    x = torch.randint(-2, 3, (N, 2), generator=g).float()
    W = torch.randint(-2, 3, (2, F), generator=g).float()
    b = torch.randint(-3, 4, (F,), generator=g).float()
    b[[9, 39]] = float("nan")
    dead = torch.arange(0, F, 3)
    pre = torch.addmm(b, x, W)
    for aux_k in (1, 2, 5, 16, 33):
        _, aux = mx_ops.encode_aux(x, W, b, 2, "batch", dead, aux_k)
        oracle = ref.topk(pre[:, dead], aux_k)
        assert torch.equal(aux.indices, dead[oracle.indices]), aux_k
        torch.testing.assert_close(aux.values, oracle.values, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_gradcheck_float64(seed, mode, aux_layout):
    F = randint(4, 12)
    p = problem(randint(1, 4), randint(1, 4), randint(1, 4), F, randint(1, F), dtype=torch.float64)
    dead = _dead(F)
    aux_k = randint(1, dead.numel())
    target = torch.randn(p.x.shape[0], p.W_dec.shape[1], dtype=torch.float64)

    def f(x, W_enc, b_enc, W_dec):
        acts, aux = mx_ops.encode_aux(x, W_enc, b_enc, p.k, mode, dead, aux_k)
        main = mx.nested_mse(acts, W_dec, p.b_dec.detach(), target, p.ends).sum()
        zero = torch.zeros(W_dec.shape[1], dtype=torch.float64)
        return main + 0.3 * mx.nested_mse(aux, W_dec, zero, target, [F])[0]

    assert torch.autograd.gradcheck(f, (p.x, p.W_enc, p.b_enc, p.W_dec), eps=1e-6, atol=1e-5)


def _args(**over):
    x, W, b = torch.randn(5, 4), torch.randn(4, 10), torch.randn(10)
    args = dict(x=x, W_enc=W, b_enc=b, k=2, mode="row", dead=torch.tensor([1, 4, 8]), aux_k=2)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,exc,needle",
    [
        (dict(dead=torch.tensor([1.0, 4.0])), TypeError, "dead"),
        (dict(dead=[1, 4]), TypeError, "dead"),
        (dict(dead=torch.tensor([[1, 4]])), ValueError, "dead"),
        (dict(dead=torch.tensor([4, 1])), ValueError, "dead"),
        (dict(dead=torch.tensor([1, 1, 4])), ValueError, "dead"),
        (dict(dead=torch.tensor([1, 10])), ValueError, "dead"),
        (dict(dead=torch.tensor([-1, 3])), ValueError, "dead"),
        (dict(dead=torch.tensor([], dtype=torch.long)), ValueError, "dead"),
        (dict(aux_k=0), ValueError, "aux_k"),
        (dict(aux_k=4), ValueError, "aux_k"),
        (dict(aux_k=1.5), TypeError, "aux_k"),
        (dict(k=0), ValueError, "k"),
        (dict(mode="col"), ValueError, "mode"),
        (dict(b_enc=torch.randn(9)), ValueError, "b_enc"),
    ],
)
def test_invalid_arguments_name_the_argument(over, exc, needle):
    a = _args(**over)
    with pytest.raises(exc, match=needle):
        mx_ops.encode_aux(a["x"], a["W_enc"], a["b_enc"], a["k"], a["mode"], a["dead"], a["aux_k"])
