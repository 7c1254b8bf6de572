"""Shared helpers for the CUDA tests: problem builders on CPU (moved to the GPU), comparisons, tolerances."""

from __future__ import annotations

import os

import pytest
import torch

import matryoshka_ext as mx

# the same tolerances and random shapes as the CPU op tests (re-exported for the CUDA test modules)
from ..ops.problems import TOL, randint, random_groups  # noqa: F401

# "cuda" on the GPU machine. "cpu" with MX_CUDA_TEST_EMU=1 (see conftest.py) dry-runs these tests without a
# GPU: the public ops' CPU kernels are then replaced by the CUDA kernels running on the CPU emulator.
DEVICE = os.environ.get("MX_CUDA_TEST_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
needs_device = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA device")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="GPU-sized test (not in emulated dry runs)")


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def make_pre(kind: str, N: int, F: int, dtype: torch.dtype) -> torch.Tensor:
    """Pre-activations on the CPU: plain, tied, without positives, with NaN/inf, all zero, heavy-tailed."""
    if kind == "randn":
        x = torch.randn(N, F, dtype=torch.float64)
    elif kind == "ties":
        x = torch.randint(-2, 3, (N, F)).double() * 0.5
    elif kind == "negative":
        x = -torch.rand(N, F, dtype=torch.float64)
    elif kind == "nan_inf":
        x = torch.randn(N, F, dtype=torch.float64)
        x[torch.rand(N, F) < 0.05] = float("nan")
        x[torch.rand(N, F) < 0.05] = float("inf")
        x[torch.rand(N, F) < 0.05] = float("-inf")
    elif kind == "zeros":
        x = torch.zeros(N, F, dtype=torch.float64)
    elif kind == "heavy":
        x = (
            torch.exp(torch.randn(N, F, dtype=torch.float64) * 3)
            * torch.randn(N, 1, dtype=torch.float64).sign()
        )
    else:
        raise ValueError(kind)
    return x.to(dtype)


def same_selection(a: mx.SparseActs, b: mx.SparseActs, what: str = "") -> None:
    """Bit-identical CSR (NaN values compare equal)."""
    assert torch.equal(a.row_offsets.cpu(), b.row_offsets.cpu()), f"{what}: row_offsets differ"
    assert torch.equal(a.indices.cpu(), b.indices.cpu()), f"{what}: indices differ"
    torch.testing.assert_close(a.values.cpu(), b.values.cpu(), rtol=0, atol=0, equal_nan=True, msg=what)


def to(acts: mx.SparseActs, device, values: torch.Tensor | None = None) -> mx.SparseActs:
    v = acts.values if values is None else values
    return mx.SparseActs(v.to(device), acts.indices.to(device), acts.row_offsets.to(device), acts.num_latents)


def close(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """Kernel comparison at the storage dtype's tolerance, atol scaled by the reference's magnitude."""
    atol, rtol = TOL[dtype]
    u, v = u.detach().cpu().double(), v.detach().cpu().double()
    scale = max(1.0, v.abs().max().item()) if v.numel() else 1.0
    torch.testing.assert_close(u, v, atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}")


def rel_err(u: torch.Tensor, v: torch.Tensor) -> float:
    """||u - v|| / ||v|| in float64 (on u's device)."""
    u, v = u.detach().double(), v.detach().double().to(u.device)
    return ((u - v).norm() / v.norm().clamp_min(1e-30)).item()


def leaf(t: torch.Tensor, device) -> torch.Tensor:
    return t.detach().to(device).requires_grad_()


def decoder_run(lib, acts: mx.SparseActs, W: torch.Tensor, b: torch.Tensor, y: torch.Tensor, ends, weights):
    """nested_mse + nested_decode, one scalar loss using both, grads of (values, W, b, y)."""
    values = acts.values.detach().clone().requires_grad_()
    a = mx.SparseActs(values, acts.indices, acts.row_offsets, acts.num_latents)
    mse = lib.nested_mse(a, W, b, y, ends)
    rec = lib.nested_decode(a, W, b, ends)
    ramp = torch.linspace(-1, 1, rec.shape[-1], device=rec.device, dtype=mse.dtype)
    loss = (mse * weights.to(mse.device, mse.dtype)).sum() + (rec.to(mse.dtype) * ramp).mean()
    grads = torch.autograd.grad(loss, [values, W, b, y])
    return mse, rec, grads


def pipeline(lib, leaves, k: int, mode: str, ends, weights, enc_t: bool = False):
    """encode -> nested_mse + nested_decode; returns (acts, mse, rec, grads of the six leaves).

    enc_t: leaves[1] is W_enc^T [F, d_in] (the transcoder's layout) and W_enc is its transposed view.
    """
    x, W_enc, b_enc, W_dec, b_dec, y = leaves
    W_enc = W_enc.t() if enc_t else W_enc
    acts = lib.encode(x, W_enc, b_enc, k, mode)
    mse = lib.nested_mse(acts, W_dec, b_dec, y, ends)
    rec = lib.nested_decode(acts, W_dec, b_dec, ends)
    ramp = torch.linspace(-1, 1, rec.shape[-1], device=rec.device, dtype=mse.dtype)
    loss = (mse * weights.to(mse.device, mse.dtype)).sum() + (rec.to(mse.dtype) * ramp).mean()
    grads = torch.autograd.grad(loss, list(leaves))
    return acts, mse, rec, grads


def make_leaves(N, d_in, d_out, F, dtype, device, enc_transposed=False):
    """x, W_enc, b_enc, W_dec, b_dec, y drawn in float64 on the CPU, cast, moved (leaves).

    enc_transposed: the second leaf is W_enc^T [F, d_in]; use pipeline(..., enc_t=True).
    """

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).to(device).requires_grad_()

    W_enc = t(F, d_in, scale=d_in**-0.5) if enc_transposed else t(d_in, F, scale=d_in**-0.5)
    return [t(N, d_in), W_enc, t(F, scale=0.1), t(F, d_out, scale=0.3), t(d_out, scale=0.1), t(N, d_out)]
