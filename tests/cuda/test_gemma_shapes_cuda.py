"""Full Gemma-2-2B shapes (N=4096, d_in=d_out=2304, F=18432 / 65536, k=64..128, m=5): encode -> nested loss
and decode, forward and backward, against the reference run on the same GPU (float32 math inside)."""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

from ._util import DEVICE, gpu_only, needs_device, pipeline, rel_err, same_selection

pytestmark = [pytest.mark.cuda, needs_device, gpu_only]

N, D = 4096, 2304
CASES = [
    (torch.bfloat16, 18432, 128, "row"),
    (torch.float32, 18432, 64, "batch"),
    (torch.bfloat16, 65536, 64, "batch"),
    (torch.float32, 65536, 128, "row"),
]
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _no_tf32_and_free_memory():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be a float32 reference
    yield
    torch.backends.cuda.matmul.allow_tf32 = old
    torch.cuda.empty_cache()


def _leaves(F: int, dtype: torch.dtype):
    g = torch.Generator(device=DEVICE).manual_seed(F)

    def t(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, device=DEVICE) * scale
        return x.to(dtype).requires_grad_()

    # W_enc is passed as the transposed view of this [F, d_in] leaf: the transcoder's layout.
    return [t(N, D), t(F, D, scale=D**-0.5), t(F, scale=0.1), t(F, D, scale=0.05), t(D, scale=0.1), t(N, D)]


@pytest.mark.parametrize("dtype,F,k,mode", CASES, ids=lambda c: str(c).replace("torch.", ""))
def test_gemma_shapes_fwd_bwd_vs_reference(dtype, F, k, mode):
    leaves = _leaves(F, dtype)
    ends = [F // 16, F // 8, F // 4, F // 2, F]
    w = torch.tensor([0.5, 0.75, 1.0, 1.25, 1.5])
    a1, mse1, rec1, g1 = pipeline(mx, leaves, k, mode, ends, w, enc_t=True)
    a2, mse2, rec2, g2 = pipeline(ref, leaves, k, mode, ends, w, enc_t=True)
    same_selection(a1, a2, "encode selection")
    assert a1.nnz == N * k
    tol = REL_TOL[dtype]
    errs = {"mse": rel_err(mse1, mse2), "decode": rel_err(rec1, rec2)}
    for name, u, v in zip(["x", "W_enc", "b_enc", "W_dec", "b_dec", "target"], g1, g2):
        assert u.dtype == v.dtype == dtype and u.shape == v.shape, name
        errs[f"grad {name}"] = rel_err(u, v)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemma_shapes_selection_with_heavy_ties(dtype):
    # Values from a small set at full size. 3 values: the threshold bin outgrows shared memory (global path);
    # 17 values: it fits. BatchTopK grants its ties to the first rows only (later rows stay empty).
    g = torch.Generator(device=DEVICE).manual_seed(1)
    for lo, hi in ((-1, 2), (-8, 9)):
        pre = (torch.randint(lo, hi, (N, 18432), generator=g, device=DEVICE).float() / 4).to(dtype)
        for op in ("topk", "batch_topk"):
            same_selection(
                getattr(mx, op)(pre, 64), getattr(ref, op)(pre, 64), f"{op} values in [{lo}, {hi})"
            )
