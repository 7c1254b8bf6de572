"""CUDA nested decode / MSE and their backward (grouped_dot, latent_grad), the sparse encoder backward: parity
with the CPU kernels and the reference, forward and every gradient, any entry order, determinism."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref
from matryoshka_ext._library import ops

from ._util import (
    DEVICE,
    DTYPES,
    close,
    decoder_run,
    make_leaves,
    needs_device,
    pipeline,
    randint,
    random_groups,
    same_selection,
    to,
)

pytestmark = [pytest.mark.cuda, needs_device]


def _acts(N, F, k, mode, dtype, kind="randn"):
    """CPU SparseActs from our CPU selection (kind 'sparse': many rows with fewer positives than k)."""
    pre = torch.randn(N, F, dtype=torch.float64)
    if kind == "sparse":
        pre = torch.where(torch.rand(N, F) < 0.02, pre.abs(), -pre.abs())
    pre = pre.to(dtype)
    return mx.topk(pre, k) if mode == "row" else mx.batch_topk(pre, k)


def _shuffle_rows(acts: mx.SparseActs) -> mx.SparseActs:
    """Same entries, random order inside every row."""
    ro = acts.row_offsets.tolist()
    perm = torch.cat([torch.randperm(ro[r + 1] - ro[r]) + ro[r] for r in range(len(ro) - 1)]).long()
    return mx.SparseActs(acts.values[perm], acts.indices[perm], acts.row_offsets, acts.num_latents)


def _decoder_parity(acts_cpu, d, dtype, ends, shuffle=False, misaligned=False):
    """Decoder fwd + grads on CUDA == CPU kernels == reference (on CUDA, float32 / float64 math)."""
    F = acts_cpu.num_latents
    N = acts_cpu.num_rows
    if shuffle:
        acts_cpu = _shuffle_rows(acts_cpu)
    W = (torch.randn(F, d, dtype=torch.float64) * 0.3).to(dtype)
    b = (torch.randn(d, dtype=torch.float64) * 0.1).to(dtype)
    y = torch.randn(N, d, dtype=torch.float64).to(dtype)
    w = torch.rand(len(ends)) + 0.5
    results = {}
    for name, lib, dev in (("kernel", mx, DEVICE), ("cpu", mx, "cpu"), ("reference", ref, DEVICE)):
        Wd = W.to(dev)
        if misaligned and dev == DEVICE:
            # A contiguous view 2 elements into its storage: row pointers not 16-byte aligned (scalar path).
            big = torch.empty(F * d + 2, dtype=dtype, device=dev)
            big[2:] = Wd.flatten()
            Wd = big[2:].view(F, d)
        Wd = Wd.requires_grad_()
        bd, yd = b.to(dev).requires_grad_(), y.to(dev).requires_grad_()
        results[name] = decoder_run(lib, to(acts_cpu, dev), Wd, bd, yd, ends, w)
    mse, rec, grads = results["kernel"]
    assert (
        mse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        and mse.device.type == DEVICE
    )
    assert rec.dtype == dtype and rec.shape == (len(ends), N, d)
    for other in ("cpu", "reference"):
        mse2, rec2, grads2 = results[other]
        close(mse, mse2, dtype, f"mse vs {other}")
        close(rec, rec2, dtype, f"decode vs {other}")
        for gname, u, v in zip(["values", "W_dec", "b_dec", "target"], grads, grads2):
            assert u.dtype == v.dtype, gname
            close(u, v, dtype, f"grad {gname} vs {other}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_decoder_random_shapes(seed, dtype, mode):
    for i in range(4):
        N, F, d = randint(1, 50), randint(1, 300), randint(1, 70)
        k = randint(1, F)
        acts = _acts(N, F, k, mode, dtype, kind="sparse" if i == 3 else "randn")
        _decoder_parity(acts, d, dtype, random_groups(F), shuffle=i == 2)


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize(
    "N,F,k,d,ends",
    [
        (1, 10, 1, 3, None),  # N = 1, k = 1
        (6, 13, 13, 7, None),  # k = F
        (9, 37, 5, 8, [37]),  # one group
        (7, 6, 2, 5, [1, 2, 3, 4, 5, 6]),  # groups of size 1
        (33, 211, 9, 19, "random"),  # F prime, d odd
        (5, 2000, 700, 40, "random"),  # rows longer than one shared-memory chunk
        (4, 64, 20, 300, "size1"),  # 64 prefixes: the backward stages its terms in S (too many for smem)
        (16, 4096, 64, 2304, [256, 512, 1024, 2048, 4096]),  # the real width: several column tiles
        (3, 50, 10, 2305, [10, 50]),  # width not a multiple of 8
    ],
)
def test_decoder_edge_shapes(seed, mode, N, F, k, d, ends):
    ends = (
        random_groups(F) if ends in (None, "random") else list(range(1, F + 1)) if ends == "size1" else ends
    )
    for dtype in (torch.float32, torch.bfloat16):
        acts = _acts(N, F, k, mode, dtype)
        _decoder_parity(acts, d, dtype, ends)
        _decoder_parity(acts, d, dtype, ends, shuffle=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_misaligned_weights(seed, dtype):
    acts = _acts(20, 100, 8, "row", dtype)
    _decoder_parity(acts, 64, dtype, [30, 100], misaligned=True)


def test_decoder_empty_rows_and_zero_values(seed):
    # Hand-made CSR: empty rows, explicit zeros, entries in descending order.
    F, d = 40, 24
    rows = [[], [5, 3, 39], [], [0], [7, 8, 2]]
    vals = [[], [1.0, 0.0, -2.0], [], [0.0], [0.5, 1.5, 3.0]]
    idx = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    v = torch.tensor([x for r in vals for x in r])
    ro = torch.tensor([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist())
    acts = mx.SparseActs(v, idx, ro, F)
    _decoder_parity(acts, d, torch.float32, [8, 20, 40])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_helpers_direct(seed, dtype):
    """grouped_dot, latent_grad (S in values' dtype or accumulation dtype; several output dtypes) and
    nested_mse_backward called directly: CUDA == CPU."""
    N, F, d = randint(1, 40), randint(2, 400), randint(1, 90)
    k = randint(1, F)
    ends = random_groups(F)
    acts = _shuffle_rows(_acts(N, F, k, "batch", dtype))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    S = torch.randn(len(ends), N, d, dtype=acc)
    W = torch.randn(F, d, dtype=torch.float64).to(dtype)
    v, i, r = acts.values, acts.indices, acts.row_offsets
    cu = lambda t: t.to(DEVICE)  # noqa: E731
    close(
        ops.grouped_dot(cu(S), cu(i), cu(r), cu(W), ends),
        ops.grouped_dot(S, i, r, W, ends),
        dtype,
        "grouped_dot",
    )
    for S_dtype in dict.fromkeys([acc, dtype]):
        Sx = S.to(S_dtype)
        for out in dict.fromkeys([dtype, acc, torch.float16, torch.float32]):
            g1, s1 = ops.latent_grad(cu(Sx), cu(v), cu(i), cu(r), ends, F, out)
            g2, s2 = ops.latent_grad(Sx, v, i, r, ends, F, out)
            assert g1.dtype == out and s1.dtype == out
            tol_dtype = dtype if out in (dtype, acc) else torch.float16
            close(g1, g2, tol_dtype, f"latent_grad S={S_dtype} out={out}")
            close(s1, s2, tol_dtype, f"value_sums S={S_dtype} out={out}")
    # transposed=True (the encoder backward's [d, F] layout): contiguous, the same as the CPU kernel's
    gt1, _ = ops.latent_grad(cu(S), cu(v), cu(i), cu(r), ends, F, acc, True)
    gt2, _ = ops.latent_grad(S, v, i, r, ends, F, acc, True)
    assert gt1.shape == (d, F) and gt1.is_contiguous()
    close(gt1, gt2, dtype, "latent_grad transposed")
    b, y = torch.randn(d).to(dtype), torch.randn(N, d).to(dtype)
    gl = torch.rand(len(ends), dtype=acc)
    close(
        ops.nested_mse_backward(cu(gl), cu(v), cu(i), cu(r), cu(W), cu(b), cu(y), ends),
        ops.nested_mse_backward(gl, v, i, r, W, b, y, ends),
        dtype,
        "nested_mse_backward",
    )
    # A target in another dtype than W goes through the accumulation dtype.
    y32 = y.to(acc)
    close(
        ops.nested_mse(cu(v), cu(i), cu(r), cu(W), cu(b), cu(y32), ends),
        ops.nested_mse(v, i, r, W, b, y32, ends),
        dtype,
        "nested_mse float32 target",
    )


def test_value_sums_bit_identical_to_cpu(seed):
    # Sums over a latent's entries run in entry order on both backends: same float32 result exactly.
    N, F, k = 300, 50, 20
    acts = _acts(N, F, k, "row", torch.float32)
    S = torch.randn(1, N, 8)
    _, s1 = ops.latent_grad(
        S.to(DEVICE),
        acts.values.to(DEVICE),
        acts.indices.to(DEVICE),
        acts.row_offsets.to(DEVICE),
        [F],
        F,
        torch.float32,
    )
    _, s2 = ops.latent_grad(S, acts.values, acts.indices, acts.row_offsets, [F], F, torch.float32)
    assert torch.equal(s1.cpu(), s2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_encode_pipeline_vs_reference(seed, dtype, mode):
    """encode -> nested_mse + nested_decode on CUDA against the reference on CUDA (same GEMM, so the same
    selection), every gradient; W_enc given as the transposed view of an [F, d_in] leaf."""
    for i in range(3):
        N, F = randint(1, 60), randint(1, 300)
        d_in, d_out, k = randint(1, 40), randint(1, 40), randint(1, F)
        ends = random_groups(F)
        w = torch.rand(len(ends)) + 0.5
        leaves = make_leaves(N, d_in, d_out, F, dtype, DEVICE, enc_transposed=i == 1)
        a1, mse1, rec1, g1 = pipeline(mx, leaves, k, mode, ends, w, enc_t=i == 1)
        a2, mse2, rec2, g2 = pipeline(ref, leaves, k, mode, ends, w, enc_t=i == 1)
        same_selection(a1, a2, "encode")
        close(mse1, mse2, dtype, "mse")
        close(rec1, rec2, dtype, "decode")
        for name, u, v in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec", "target"], g1, g2):
            assert u is not None and v is not None and u.dtype == v.dtype, name
            close(u, v, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_deterministic_run_to_run(seed, dtype, mode):
    N, F, d = 512, 4096, 384
    ends = [512, 1024, 2048, 4096]
    w = torch.ones(len(ends))
    leaves = make_leaves(N, d, d, F, dtype, DEVICE, enc_transposed=True)
    first = pipeline(mx, leaves, 32, mode, ends, w, enc_t=True)
    second = pipeline(mx, leaves, 32, mode, ends, w, enc_t=True)
    same_selection(first[0], second[0])
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    for u, v in zip(first[3], second[3]):
        assert torch.equal(u, v)


def test_gradcheck_float64_on_cuda(seed):
    F = randint(4, 12)
    leaves = make_leaves(randint(1, 4), randint(1, 4), randint(1, 4), F, torch.float64, DEVICE)
    k, ends = randint(1, F), random_groups(F)
    w = torch.rand(len(ends), dtype=torch.float64, device=DEVICE)
    for mode in ("row", "batch"):

        def f(x, W_enc, b_enc, W_dec, b_dec, target, mode=mode):
            acts = mx.encode(x, W_enc, b_enc, k, mode)
            return (mx.nested_mse(acts, W_dec, b_dec, target, ends) * w).sum() + mx.nested_decode(
                acts, W_dec, b_dec, ends
            ).sum()

        assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-5)


def _opcheck_samples():
    F, ends = 23, [5, 11, 23]
    leaves = make_leaves(5, 6, 7, F, torch.float32, DEVICE)
    x, We, be, Wd, bd, y = leaves
    acts = mx.encode(x, We, be, 4, "row")
    v, i, r = acts.values.detach().requires_grad_(), acts.indices, acts.row_offsets
    S = torch.randn(len(ends), 5, 7, device=DEVICE)
    pre = x.detach().mm(We.detach()).requires_grad_()
    yield "topk_select", (pre, 4)
    yield "batch_topk_select", (pre, 4)
    yield "encode", (x, We, be, 4, True)
    yield "encode", (x, We, be, 4, False)
    yield "nested_decode", (v, i, r, Wd, bd, ends)
    yield "nested_decode", (v, i, r, Wd, None, ends)
    yield "nested_mse", (v, i, r, Wd, bd, y, ends)
    gl = torch.rand(len(ends), device=DEVICE)
    yield "nested_mse_backward", (gl, v.detach(), i, r, Wd.detach(), bd.detach(), y.detach(), ends)
    yield "grouped_dot", (S, i, r, Wd.detach(), ends)
    yield "latent_grad", (S, v.detach(), i, r, ends, F, torch.float32)


def test_opcheck_every_op_on_cuda():
    torch.manual_seed(0)
    for name, args in _opcheck_samples():
        torch.library.opcheck(getattr(ops, name).default, args)
