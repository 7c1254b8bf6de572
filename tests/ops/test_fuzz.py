"""Hypothesis fuzzing of the public ops: valid draws match the reference, invalid draws raise named errors."""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import matryoshka_ext as mx  # noqa: E402
from matryoshka_ext import reference as ref  # noqa: E402

from .problems import TOL, Problem, run_pipeline, same_selection  # noqa: E402


@st.composite
def problems(draw):
    N = draw(st.integers(1, 24))
    F = draw(st.integers(1, 64))
    d_in, d_out = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    k = draw(st.integers(1, F))
    cuts = draw(st.sets(st.integers(1, F - 1), max_size=5)) if F > 1 else set()
    ends = sorted(cuts) + [F]
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        if ties:  # coarse values: many exact ties, and zeros after relu
            x = torch.round(x * 2) / 2
        return x.to(dtype).requires_grad_()

    return Problem(t(N, d_in), t(d_in, F), t(F), t(F, d_out), t(d_out), t(N, d_out), k, ends), dtype


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(["row", "batch"]))
def test_valid_inputs_match_reference(pd, mode):
    p, dtype = pd
    w = torch.ones(len(p.ends))
    a1, mse1, rec1, g1 = run_pipeline(mx, p, mode, w)
    a2, mse2, rec2, g2 = run_pipeline(ref, p, mode, w)
    same_selection(a1, a2)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(mse1, mse2, atol=atol, rtol=rtol)
    for u, v in zip(g1, g2):
        scale = max(1.0, v.float().abs().max().item())
        torch.testing.assert_close(u.float(), v.float(), atol=atol * scale, rtol=rtol)


@settings(max_examples=150, deadline=None)
@given(
    N=st.integers(-1, 6),
    F=st.integers(-1, 12),
    k=st.integers(-3, 15),
    ends=st.lists(st.integers(-2, 14), max_size=4),
    bad_index=st.integers(-5, 20),
)
def test_arbitrary_arguments_raise_or_match(N, F, k, ends, bad_index):
    """Any argument combination either matches the reference or raises ValueError/TypeError — never crashes."""
    try:
        pre = torch.randn(max(N, 0), max(F, 0))
        acts = mx.topk(pre, k)
    except (ValueError, TypeError):
        return
    same_selection(acts, ref.topk(pre, k))
    W, b = torch.randn(F, 3), torch.randn(3)
    idx = acts.indices.clone()
    idx[0] = bad_index
    hacked = mx.SparseActs(acts.values, idx, acts.row_offsets, F)
    try:
        out = mx.nested_decode(hacked, W, b, ends)
    except (ValueError, TypeError):
        return
    torch.testing.assert_close(out, ref.nested_decode(hacked.validate(), W, b, ends))
