"""Every CUDA op, forward and backward, at small shapes: the workload for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python tests/cuda/sanitize_small.py
    compute-sanitizer --tool racecheck python tests/cuda/sanitize_small.py --race     (one small case)

Covers both selection paths (shared-memory candidates and the global fallback), unaligned rows, k = F, the
nested kernels' sorted and any-order paths, multi-chunk rows, the backward helpers, and CSR content that is
out of range (which the kernels must guard, not read).
"""

from __future__ import annotations

import os
import sys

import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops

DEV = os.environ.get("MX_CUDA_TEST_DEVICE", "cuda")  # "cpu": dry run on the emulator (see conftest.py)


def selection(dtype: torch.dtype, race: bool) -> None:
    cases = [(2, 5000, 40, "randn"), (2, 5000, 100, "ones")]
    if not race:
        cases += [
            (3, 1001, 7, "randn"),
            (2, 300, 300, "randn"),
            (1, 1, 1, "randn"),
            (4, 2000, 30, "negative"),
        ]
    for N, F, k, kind in cases:
        pre = {"randn": torch.randn(N, F), "ones": torch.ones(N, F), "negative": -torch.rand(N, F)}[kind]
        pre = pre.to(dtype).to(DEV)
        for op in (mx.topk, mx.batch_topk):
            acts = op(pre, k)
            ref = op(pre.cpu(), k)
            assert torch.equal(acts.indices.cpu(), ref.indices), (op.__name__, N, F, k, kind)


def pipeline(dtype: torch.dtype, race: bool) -> None:
    N, d_in, d_out, F, k = (6, 24, 20, 200, 5) if race else (24, 40, 36, 300, 8)
    ends = [50, 120, F]
    for mode in ("row",) if race else ("row", "batch"):

        def t(*shape):
            return (torch.randn(*shape) * 0.3).to(dtype).to(DEV).requires_grad_()

        x, W_encT, b_enc, W_dec, b_dec, y = t(N, d_in), t(F, d_in), t(F), t(F, d_out), t(d_out), t(N, d_out)
        acts = mx.encode(x, W_encT.t(), b_enc, k, mode)
        loss = mx.nested_mse(acts, W_dec, b_dec, y, ends).sum()
        if not race:
            loss = loss + mx.nested_decode(acts, W_dec, b_dec, ends).float().mean()
        loss.backward()


def any_order_and_long_rows(dtype: torch.dtype) -> None:
    N, F, d, k = 5, 2000, 40, 600  # rows longer than one shared-memory chunk
    acts = mx.topk(torch.randn(N, F).to(dtype), k)
    perm = torch.cat([torch.randperm(k) + r * k for r in range(N)])
    v = acts.values[perm].to(DEV).requires_grad_()
    i, r = acts.indices[perm].to(DEV), acts.row_offsets.to(DEV)
    W = torch.randn(F, d).to(dtype).to(DEV).requires_grad_()
    b, y = torch.randn(d).to(dtype).to(DEV).requires_grad_(), torch.randn(N, d).to(dtype).to(DEV)
    shuffled = mx.SparseActs(v, i, r, F)
    ends = list(range(100, F + 1, 100))  # 20 prefixes
    loss = (
        mx.nested_mse(shuffled, W, b, y, ends).sum() + mx.nested_decode(shuffled, W, b, ends).float().mean()
    )
    loss.backward()
    # Many prefixes and a wide row: the backward stages its per-prefix terms in S instead of shared memory.
    ends = list(range(1, 65))
    acts = mx.topk(torch.randn(3, 64).to(dtype), 20)
    W = torch.randn(64, 300).to(dtype).to(DEV)
    ops.nested_mse_backward(
        torch.ones(64, device=DEV),
        acts.values.to(DEV),
        acts.indices.to(DEV),
        acts.row_offsets.to(DEV),
        W,
        torch.zeros(300, dtype=dtype, device=DEV),
        torch.randn(3, 300).to(dtype).to(DEV),
        ends,
    )


def bad_content(dtype: torch.dtype) -> None:
    F, d, N = 10, 12, 3
    W, b, y = (
        torch.randn(F, d).to(dtype).to(DEV),
        torch.randn(d).to(dtype).to(DEV),
        torch.randn(N, d).to(dtype).to(DEV),
    )
    values = torch.randn(6).to(dtype).to(DEV)
    S = torch.randn(2, N, d, device=DEV)
    for idx in ([0, 10, -1, 2**40, 3, -(2**40)], [11, 12, 13, 14, 15, 16]):
        for ro in ([0, 2, 4, 6], [0, 5, 2, 6], [-3, 2, 100, 6], [6, 0, 3, 0]):
            i = torch.tensor(idx, device=DEV)
            r = torch.tensor(ro, device=DEV)
            ops.nested_decode(values, i, r, W, b, [4, F])
            ops.nested_mse(values, i, r, W, b, y, [4, F])
            ops.nested_mse_backward(torch.ones(2, device=DEV), values, i, r, W, b, y, [4, F])
            ops.grouped_dot(S, i, r, W, [4, F])
            ops.latent_grad(S, values, i, r, [4, F], F, dtype)
            ops.latent_grad(S.to(dtype), values, i, r, [4, F], F, torch.float32)


def main(race: bool) -> None:
    torch.manual_seed(0)
    if DEV == "cuda":
        assert torch.cuda.is_available() and mx.has_cuda_kernels()
    else:
        from emu.run_emu import build  # tests/cuda is on sys.path when run as a script

        build(override_cpu=True)
    if race:
        selection(torch.float32, race)
        pipeline(torch.float32, race)
    else:
        for dtype in (torch.float32, torch.bfloat16):
            selection(dtype, race)
            pipeline(dtype, race)
            any_order_and_long_rows(dtype)
            bad_content(dtype)
        for dtype in (torch.float16, torch.float64):
            selection(dtype, race)
            pipeline(dtype, race=True)  # the small one-mode pipeline
    if DEV == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_small: ok ({'racecheck' if race else 'memcheck'} workload)")


if __name__ == "__main__":
    main("--race" in sys.argv[1:])
