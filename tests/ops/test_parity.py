"""encode -> nested_mse / nested_decode against the reference, forward and every gradient."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

from .problems import TOL, problem, randint, random_groups, random_problem, run_pipeline, same_selection

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _compare(p, mode, dtype):
    weights = torch.rand(len(p.ends), dtype=torch.float64).float() + 0.5
    a1, mse1, rec1, g1 = run_pipeline(mx, p, mode, weights)
    a2, mse2, rec2, g2 = run_pipeline(ref, p, mode, weights)
    same_selection(a1, a2)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(mse1, mse2, atol=atol, rtol=rtol)
    torch.testing.assert_close(rec1.float(), rec2.float(), atol=atol, rtol=rtol)
    for name, u, v in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec", "target"], g1, g2):
        assert u is not None and v is not None, name
        scale = max(1.0, v.float().abs().max().item())
        torch.testing.assert_close(
            u.float(), v.float(), atol=atol * scale, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_random_shapes(seed, dtype, mode):
    for _ in range(4):
        _compare(random_problem(dtype), mode, dtype)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize(
    "N,d_in,d_out,F,k,ends",
    [
        (1, 5, 3, 10, 1, None),  # N = 1, k = 1
        (6, 4, 7, 13, 13, None),  # k = F
        (9, 8, 8, 37, 5, [37]),  # one group
        (7, 3, 5, 6, 2, [1, 2, 3, 4, 5, 6]),  # groups of size 1
        (33, 17, 19, 211, 9, "random"),  # F prime, d odd
        (21, 300, 257, 90, 7, "random"),  # rows wider than the CPU's 128-column register blocks, with tails
        (12, 128, 128, 40, 40, "random"),  # exactly one block, k = F
    ],
)
def test_edge_shapes(seed, mode, N, d_in, d_out, F, k, ends):
    ends = random_groups(F) if ends in (None, "random") else ends
    _compare(problem(N, d_in, d_out, F, k, ends=ends), mode, torch.float32)


@pytest.mark.parametrize("order", ["descending", "shuffled"])
@pytest.mark.parametrize("width", ["narrow", "wide"])
def test_decode_from_dense_acts_any_order(seed, order, width):
    # SparseActs built by hand (not by our selection) with entries in descending or random order inside each row:
    # the kernels must not rely on ascending indices for correctness. "wide" rows (d >= 128) take the CPU's
    # register-blocked path, where a shuffled row enters a group more than once.
    N, F = randint(1, 20), randint(2, 80)
    d = randint(1, 30) if width == "narrow" else randint(128, 300)
    dense = torch.relu(torch.randn(N, F)) * (torch.rand(N, F) < 0.3)
    acts = mx.SparseActs.from_dense(dense)
    rows = []
    for r in range(N):
        lo, hi = int(acts.row_offsets[r]), int(acts.row_offsets[r + 1])
        rows.append(torch.arange(hi - 1, lo - 1, -1) if order == "descending" else lo + torch.randperm(hi - lo))
    perm = torch.cat(rows)
    W, b, y, ends = torch.randn(F, d), torch.randn(d), torch.randn(N, d), random_groups(F)
    v1, W1, v2, W2 = (t.clone().requires_grad_() for t in (acts.values[perm], W, acts.values, W))
    shuffled = mx.SparseActs(v1, acts.indices[perm], acts.row_offsets, F)
    plain = mx.SparseActs(v2, acts.indices, acts.row_offsets, F)
    torch.testing.assert_close(mx.nested_decode(shuffled, W1, b, ends), ref.nested_decode(plain, W2, b, ends))
    w = torch.rand(len(ends)) + 0.5
    ours, theirs = mx.nested_mse(shuffled, W1, b, y, ends), ref.nested_mse(plain, W2, b, y, ends)
    torch.testing.assert_close(ours, theirs)
    (ours * w).sum().backward()
    (theirs * w).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad[perm])
    torch.testing.assert_close(W1.grad, W2.grad)


def test_prefix_losses_fall_to_the_full_decode(seed):
    # The last prefix is the plain full decode; each prefix equals a decode with a truncated dictionary.
    p = random_problem()
    acts = mx.encode(p.x, p.W_enc, p.b_enc, p.k, "row")
    rec = mx.nested_decode(acts, p.W_dec, p.b_dec, p.ends)
    for i, e in enumerate(p.ends):
        expected = acts.to_dense()[:, :e] @ p.W_dec[:e] + p.b_dec
        torch.testing.assert_close(rec[i], expected, atol=1e-5, rtol=1e-5)


def test_deterministic_run_to_run(seed):
    p = random_problem()
    w = torch.ones(len(p.ends))
    first = run_pipeline(mx, p, "batch", w)
    second = run_pipeline(mx, p, "batch", w)
    for u, v in zip(first[3], second[3]):
        assert torch.equal(u, v)


def test_b_dec_none_and_target_grad(seed):
    p = random_problem(torch.float64)
    acts = mx.encode(p.x, p.W_enc, p.b_enc, p.k, "row")
    out = mx.nested_decode(acts, p.W_dec, None, p.ends)
    torch.testing.assert_close(out, ref.nested_decode(acts, p.W_dec, None, p.ends))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_latent_grad_transposed_is_the_same_reduction(seed, dtype, threads):
    # transposed=True writes [d, F] (W_enc's layout) in tiles of 16 latents: F not a multiple of 16 and thread
    # chunks that do not start on a tile boundary must give the same numbers, bit for bit, as the [F, d] result.
    from matryoshka_ext._library import ops as raw

    # d up to 300: the CPU's float path reduces 128-column blocks in registers, the rest in the plain loop
    N, d, F = randint(3, 40), randint(1, 300), randint(1, 90)
    k = randint(1, F)
    pre = torch.randn(N, F, dtype=torch.float64).to(dtype)
    acts = mx.topk(pre, k)
    S = torch.randn(1, N, d, dtype=torch.float64).to(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g, s = raw.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, dtype)
        gt, st = raw.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, dtype, True)
    finally:
        torch.set_num_threads(before)
    assert gt.shape == (d, F) and gt.is_contiguous()
    assert torch.equal(gt, g.t()) and torch.equal(st, s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_mse_backward_dot_equals_the_two_ops(seed, dtype):
    # nested_mse_backward_dot (what the autograd of nested_mse calls) must give the bits of nested_mse_backward
    # followed by grouped_dot.
    from matryoshka_ext._library import ops as raw

    p = random_problem(dtype)
    acts = mx.encode(p.x.detach(), p.W_enc.detach(), p.b_enc.detach(), p.k, "batch")
    args = (torch.rand(len(p.ends)), acts.values, acts.indices, acts.row_offsets, p.W_dec.detach(),
            p.b_dec.detach(), p.target.detach(), p.ends)
    S, gv = raw.nested_mse_backward_dot(*args)
    S2 = raw.nested_mse_backward(*args)
    assert torch.equal(S, S2)
    assert torch.equal(gv, raw.grouped_dot(S2, acts.indices, acts.row_offsets, p.W_dec.detach(), p.ends))
