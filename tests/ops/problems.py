"""Random problems for op tests: shapes, groups and tensors drawn fresh from torch's global generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import matryoshka_ext as mx

# atol/rtol per storage dtype for kernel-vs-reference comparisons (both accumulate in float32).
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (3e-2, 2e-2),
    torch.float16: (5e-3, 5e-3),
}


def randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, ()).item())


def random_groups(F: int, m: int | None = None) -> list[int]:
    """Strictly increasing prefix ends in [1, F], last == F, with m groups (random when None)."""
    m = min(F, m if m is not None else randint(1, min(F, 6)))
    cuts = torch.randperm(F - 1)[: m - 1] + 1 if m > 1 else torch.tensor([], dtype=torch.long)
    return sorted(int(c) for c in cuts) + [F]


@dataclass
class Problem:
    x: torch.Tensor  # [N, d_in]
    W_enc: torch.Tensor  # [d_in, F]
    b_enc: torch.Tensor  # [F]
    W_dec: torch.Tensor  # [F, d_out]
    b_dec: torch.Tensor  # [d_out]
    target: torch.Tensor  # [N, d_out]
    k: int
    ends: list[int]

    def leaves(self) -> list[torch.Tensor]:
        return [self.x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.target]


def problem(
    N: int, d_in: int, d_out: int, F: int, k: int, dtype=torch.float32, ends: list[int] | None = None, device="cpu"
) -> Problem:
    def t(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).to(device).requires_grad_()

    return Problem(
        x=t(N, d_in),
        W_enc=t(d_in, F, scale=d_in**-0.5),
        b_enc=t(F, scale=0.1),
        W_dec=t(F, d_out, scale=0.3),
        b_dec=t(d_out, scale=0.1),
        target=t(N, d_out),
        k=k,
        ends=ends if ends is not None else random_groups(F),
    )


def random_problem(dtype=torch.float32, device="cpu") -> Problem:
    N, F = randint(1, 70), randint(1, 300)
    return problem(N, randint(1, 40), randint(1, 40), F, randint(1, F), dtype=dtype, device=device)


def run_pipeline(lib, p: Problem, mode: str, weights: torch.Tensor):
    """Encode -> nested_mse + nested_decode, a scalar loss using every output, and grads of every leaf."""
    acts = lib.encode(p.x, p.W_enc, p.b_enc, p.k, mode)
    mse = lib.nested_mse(acts, p.W_dec, p.b_dec, p.target, p.ends)
    rec = lib.nested_decode(acts, p.W_dec, p.b_dec, p.ends)
    ramp = torch.linspace(-1, 1, rec.shape[-1], device=rec.device, dtype=mse.dtype)
    loss = (mse * weights.to(mse.dtype)).sum() + (rec.to(mse.dtype) * ramp).mean()
    grads = torch.autograd.grad(loss, p.leaves(), allow_unused=True)
    return acts, mse, rec, grads


def same_selection(a: mx.SparseActs, b: mx.SparseActs) -> None:
    assert torch.equal(a.row_offsets, b.row_offsets)
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.values, b.values)
