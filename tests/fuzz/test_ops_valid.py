"""Hypothesis: valid random inputs to every public op match the reference (NaN/Inf/huge/subnormal values, ties,
empty rows, odd layouts, every dtype, the meta device), and the outputs keep the CSR contract.

NaN/Inf contract (DESIGN.md, reference.py): nothing raises or reads out of range on non-finite values. Selection
ranks every NaN above +Inf and keeps it as NaN; values <= 0 and -Inf become 0. Decoding skips zero activations
(their decoder rows are never read), everything else propagates NaN/Inf the IEEE way.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

from ..ops.problems import TOL
from .budget import examples
from .cases import FLOAT_DTYPES, build_tensor, csr_problem

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SELECT_SPECIALS = ["nan", "inf", "-inf", "huge", "-huge", "tiny", "-0"]
# No finfo.max in decoding: sums of such products overflow or not depending on summation order, which the kernels
# and the reference need not share. Inf itself is order-independent and is drawn.
DECODE_SPECIALS = ["nan", "inf", "-inf", "tiny", "-0"]


def _tensor_spec(draw, shape, dtype, specials_from, p_special=0.3, **kw) -> dict:
    n = math.prod(shape)
    specials = []
    if n and draw(st.floats(0, 1)) < p_special:
        specials = draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(specials_from)), min_size=1,
                                 max_size=min(n, 6)))
    return {"shape": list(shape), "dtype": dtype, "specials": specials, **kw}


def assert_same_values(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """Same NaN and +-Inf positions, finite entries within the dtype's tolerance scaled by their magnitude."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN positions differ\n{got}\n{want}"
    inf_got, inf_want = got.isinf(), want.isinf()
    assert torch.equal(inf_got, inf_want), f"{what}: Inf positions differ\n{got}\n{want}"
    assert torch.equal(got[inf_got].sign(), want[inf_want].sign()), f"{what}: Inf signs differ"
    fin = got.isfinite()
    if fin.any():
        atol, rtol = TOL[dtype]
        scale = max(1.0, want[fin].abs().max().item())
        torch.testing.assert_close(got[fin], want[fin], atol=atol * scale, rtol=rtol, msg=what)


def assert_same_selection(got: mx.SparseActs, want: mx.SparseActs) -> None:
    assert torch.equal(got.row_offsets, want.row_offsets), (got.row_offsets, want.row_offsets)
    assert torch.equal(got.indices, want.indices), (got.indices, want.indices)
    # Selected values are copies of relu(pre): bit-identical, NaN included.
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=0, equal_nan=True)


@st.composite
def select_inputs(draw):
    # Now and then a big problem: wide rows for the blocked heap, and > 65536 entries so that the BatchTopK radix
    # histogram runs on several threads.
    big = draw(st.integers(0, 9)) == 0
    N = draw(st.integers(1, 48 if big else 24))
    F = draw(st.integers(1, 4000 if big else 64))
    k = draw(st.one_of(st.integers(1, F), st.just(F), st.just(1)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    spec = _tensor_spec(draw, [N, F], dtype, SELECT_SPECIALS, ties=draw(st.booleans()),
                        layout=draw(st.sampled_from(["contig", "transposed", "strided", "expanded"])))
    seed = draw(st.integers(0, 2**31 - 1))
    return build_tensor(spec, torch.Generator().manual_seed(seed)), k


@settings(max_examples=examples(200), **SETTINGS)
@given(select_inputs(), st.sampled_from(["topk", "batch_topk"]))
def test_selection_matches_reference(inputs, op):
    pre, k = inputs
    n, f = pre.shape
    got = getattr(mx, op)(pre, k)
    want = getattr(ref, op)(pre.contiguous(), k)
    assert_same_selection(got, want)
    problem = csr_problem(got, n, f, k, per_row=op == "topk")
    assert problem is None, problem
    # Every value is relu(pre) at its position (NaN kept), and with a NaN-free input none is negative.
    dense_relu = torch.where(pre.isnan(), pre, pre.clamp_min(0))
    torch.testing.assert_close(got.values, dense_relu[got.row_ids(), got.indices], rtol=0, atol=0, equal_nan=True)
    if not pre.isnan().any():
        assert bool((got.values >= 0).all())


@st.composite
def encode_inputs(draw):
    N, din, F = draw(st.integers(1, 16)), draw(st.integers(0, 12)), draw(st.integers(1, 48))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    p = 0.25 if draw(st.booleans()) else 0.0
    layouts = st.sampled_from(["contig", "transposed", "strided"])
    specs = [_tensor_spec(draw, [N, din], dtype, SELECT_SPECIALS, p, layout=draw(layouts)),
             _tensor_spec(draw, [din, F], dtype, SELECT_SPECIALS, p, layout=draw(layouts), scale=0.5),
             _tensor_spec(draw, [F], dtype, SELECT_SPECIALS, p, ties=draw(st.booleans()))]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return [build_tensor(s, g) for s in specs], draw(st.integers(1, F)), draw(st.sampled_from(["row", "batch"]))


@settings(max_examples=examples(120), **SETTINGS)
@given(encode_inputs())
def test_encode_matches_reference(inputs):
    (x, W, b), k, mode = inputs
    got = mx.encode(x, W, b, k, mode)
    want = ref.encode(x, W, b, k, mode)
    assert_same_selection(got, want)
    assert csr_problem(got, x.shape[0], W.shape[1], k, per_row=mode == "row") is None
    finite = all(bool(t.isfinite().all()) for t in (x, W, b))
    if finite and x.dtype in (torch.float32, torch.float64) and x.shape[1] > 0:
        # Sparse backward against autograd through the dense reference.
        leaves = [t.detach().clone().requires_grad_() for t in (x, W, b)]
        w = torch.randn(got.nnz, dtype=x.dtype)
        g1 = torch.autograd.grad((mx.encode(*leaves, k, mode).values * w).sum(), leaves)
        g2 = torch.autograd.grad((ref.encode(*leaves, k, mode).values * w).sum(), leaves)
        for u, v in zip(g1, g2):
            assert_same_values(u, v, x.dtype, "encode grad")


@st.composite
def decode_inputs(draw):
    N, F, d = draw(st.integers(1, 12)), draw(st.integers(1, 40)), draw(st.integers(1, 10))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    # Random CSR: per row an ascending subset of latents (possibly empty), so rows of any length and nnz = 0 too.
    rows = [sorted(draw(st.sets(st.integers(0, F - 1), max_size=min(F, 8)))) for _ in range(N)]
    idx = [i for r in rows for i in r]
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + len(r))
    ends = sorted(draw(st.sets(st.integers(1, F - 1), max_size=4))) + [F] if F > 1 else [1]
    p = 0.3 if draw(st.booleans()) else 0.0
    vspec = _tensor_spec(draw, [len(idx)], dtype, DECODE_SPECIALS, p, ties=draw(st.booleans()),
                         layout=draw(st.sampled_from(["contig", "strided"])))
    Wspec = _tensor_spec(draw, [F, d], dtype, DECODE_SPECIALS, p, scale=0.3,
                         layout=draw(st.sampled_from(["contig", "transposed", "strided", "expanded"])))
    bspec = _tensor_spec(draw, [d], dtype, DECODE_SPECIALS, p / 3)
    yspec = _tensor_spec(draw, [N, d], draw(st.sampled_from(FLOAT_DTYPES)), DECODE_SPECIALS, p / 3)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    values, W, b, y = (build_tensor(s, g) for s in (vspec, Wspec, bspec, yspec))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-20, 1e3]))  # tiny and large but overflow-free magnitudes
    if dtype != torch.float16 or scale <= 1.0:
        values = values * scale
    indices = torch.tensor(idx, dtype=torch.int64)
    if draw(st.booleans()):  # a non-contiguous view with the same content
        indices = torch.stack([indices, indices]).t()[:, 0]
    acts = mx.SparseActs(values, indices, torch.tensor(offsets), F)
    return acts, W, b, y, ends, draw(st.booleans())


@settings(max_examples=examples(200), **SETTINGS)
@given(decode_inputs())
def test_nested_decode_and_mse_match_reference(inputs):
    acts, W, b, y, ends, no_bias = inputs
    dtype = W.dtype
    bias = None if no_bias else b
    assert_same_values(mx.nested_decode(acts, W, bias, ends), ref.nested_decode(acts, W, bias, ends), dtype,
                       "nested_decode")
    assert_same_values(mx.nested_mse(acts, W, b, y, ends), ref.nested_mse(acts, W, b, y, ends), dtype,
                       "nested_mse")
    dense = acts.to_dense()
    assert dense.shape == (acts.num_rows, acts.num_latents)
    assert torch.equal(dense[acts.row_ids(), acts.indices].isnan(), acts.values.isnan())
    finite = all(bool(t.isfinite().all()) for t in (acts.values, W, b, y))
    if finite and dtype in (torch.float32, torch.float64):
        # Every gradient (values, W_dec, b_dec, target) against autograd through the reference. The sine term
        # takes the outputs divided by their largest magnitude: sin of outputs in the thousands turns a one-ulp
        # difference of summation order (1e-4 at 2000 in float32) into a gradient difference of that size.
        scale = 1.0 + float(ref.nested_decode(acts, W, b, ends).detach().abs().max())

        def grads(lib):
            leaves = [t.detach().clone().requires_grad_() for t in (acts.values, W, b, y)]
            a = mx.SparseActs(leaves[0], acts.indices, acts.row_offsets, acts.num_latents)
            wts = torch.linspace(0.5, 1.5, len(ends), dtype=torch.float64)
            loss = (lib.nested_mse(a, leaves[1], leaves[2], leaves[3], ends).double() * wts).sum()
            loss = loss + (lib.nested_decode(a, leaves[1], leaves[2], ends).double() / scale).sin().sum()
            return torch.autograd.grad(loss, leaves)

        for name, u, v in zip(["values", "W_dec", "b_dec", "target"], grads(mx), grads(ref)):
            assert_same_values(u, v, dtype, f"grad {name}")


@settings(max_examples=examples(60), **SETTINGS)
@given(st.integers(1, 9), st.integers(1, 30), st.integers(0, 7), st.integers(1, 6), st.sampled_from(FLOAT_DTYPES),
       st.data())
def test_meta_device_gives_shapes(N, F, din, d, dtype, data):
    """On the meta device the ops trace shapes (torch.compile / FakeTensor path) without reading memory."""
    k = data.draw(st.integers(1, F))
    meta = dict(device="meta", dtype=getattr(torch, dtype))
    pre = torch.empty(N, F, **meta)
    for op in (mx.topk, mx.batch_topk):
        a = op(pre, k)
        assert a.values.device.type == "meta" and a.values.shape == (N * k,) and a.row_offsets.shape == (N + 1,)
    a = mx.encode(torch.empty(N, din, **meta), torch.empty(din, F, **meta), torch.empty(F, **meta), k,
                  data.draw(st.sampled_from(["row", "batch"])))
    assert a.indices.shape == (N * k,) and a.indices.dtype == torch.int64
    ends = sorted(data.draw(st.sets(st.integers(1, F - 1), max_size=3))) + [F] if F > 1 else [1]
    W, b, y = torch.empty(F, d, **meta), torch.empty(d, **meta), torch.empty(N, d, **meta)
    assert mx.nested_decode(a, W, b, ends).shape == (len(ends), N, d)
    assert mx.nested_mse(a, W, b, y, ends).shape == (len(ends),)
