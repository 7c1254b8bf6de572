"""GPU benchmarks at Gemma-2-2B shapes, every ratio measured in the same run on the same card.

N=4096, d_in=d_out=2304, F=18432 / 65536, k=64 (and 128), m=5 prefixes, bfloat16 and float32:
  nested_mse fwd+bwd: m=5 vs the same kernels with one prefix vs the dense per-prefix reference with autograd;
  selection: mx.topk vs torch.topk(relu(pre), k, dim=1),
             mx.batch_topk vs torch.topk(relu(pre).flatten(), k*N);
  encoder backward: mx.encode's sparse backward vs the dense autograd backward of x @ W_enc (relu, top-k
  mask).
Each timed call ends with torch.cuda.synchronize(). Run:
  python -m pytest benchmarks/gpu --benchmark-json=OUT.json && python benchmarks/gpu/report.py OUT.json
"""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N, D, M = 4096, 2304, 5
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SHAPES = [(18432, 64), (65536, 64), (65536, 128)]


def _ends(F: int, m: int) -> list[int]:
    return [F >> (m - 1 - i) for i in range(m)]  # F/16, F/8, F/4, F/2, F for m = 5


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _randn(*shape, g, dtype, scale=1.0):
    return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)


def _run(benchmark, group, case, kind, fn, rounds, warmup=1, setup=None):
    benchmark.group = group
    benchmark.extra_info.update(case=case, kind=kind)
    torch.cuda.synchronize()
    if setup is None:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    else:
        benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)


# ---- (1) nested loss forward + backward ------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["mx m=5", "mx m=1", "dense reference m=5"])
@pytest.mark.parametrize("F,k", SHAPES)
@pytest.mark.parametrize("dt", list(DTYPES))
def test_nested_mse_fwd_bwd(benchmark, dt, F, k, impl):
    dtype, g = DTYPES[dt], _gen()
    acts = mx.topk(_randn(N, F, g=g, dtype=dtype), k).detach()
    W = _randn(F, D, g=g, dtype=dtype, scale=0.05).requires_grad_()
    b = torch.zeros(D, device="cuda", dtype=dtype, requires_grad=True)
    y = _randn(N, D, g=g, dtype=dtype)
    lib = ref if impl.startswith("dense") else mx
    ends = [F] if impl == "mx m=1" else _ends(F, M)

    def step():
        v = acts.values.detach().requires_grad_()
        a = mx.SparseActs(v, acts.indices, acts.row_offsets, F)
        loss = lib.nested_mse(a, W, b, y, ends).sum()
        torch.autograd.grad(loss, [v, W, b])
        torch.cuda.synchronize()

    dense = lib is ref
    _run(
        benchmark,
        f"nested_mse fwd+bwd {dt} F={F} k={k}",
        impl,
        "nested",
        step,
        rounds=4 if dense else 15,
        warmup=1 if dense else 3,
    )


# ---- (2) selection -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["mx.topk", "torch.topk"])
@pytest.mark.parametrize("F", [18432, 65536])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_topk(benchmark, dt, F, impl):
    k, pre = 64, _randn(N, F, g=_gen(), dtype=DTYPES[dt])

    def step():
        if impl == "mx.topk":
            mx.topk(pre, k)
        else:
            torch.topk(torch.relu(pre), k, dim=1)
        torch.cuda.synchronize()

    _run(benchmark, f"per-row TopK {dt} N={N} F={F} k={k}", impl, "topk", step, rounds=15, warmup=3)


@pytest.mark.parametrize("impl", ["mx.batch_topk", "torch.topk flat"])
@pytest.mark.parametrize("F", [18432, 65536])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_batch_topk(benchmark, dt, F, impl):
    k, pre = 64, _randn(N, F, g=_gen(), dtype=DTYPES[dt])

    def step():
        if impl == "mx.batch_topk":
            mx.batch_topk(pre, k)
        else:
            torch.topk(torch.relu(pre).flatten(), k * N)
        torch.cuda.synchronize()

    baseline = impl != "mx.batch_topk"
    _run(
        benchmark,
        f"BatchTopK {dt} N={N} F={F} k={k}",
        impl,
        "batch_topk",
        step,
        rounds=3 if baseline else 15,
        warmup=1 if baseline else 3,
    )


# ---- (3) encoder backward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["mx sparse backward", "dense autograd backward"])
@pytest.mark.parametrize("F", [18432, 65536])
@pytest.mark.parametrize("dt", list(DTYPES))
def test_encoder_backward(benchmark, dt, F, impl):
    k, dtype, g = 64, DTYPES[dt], _gen()
    x = _randn(N, D, g=g, dtype=dtype).requires_grad_()
    W_encT = _randn(F, D, g=g, dtype=dtype, scale=D**-0.5).requires_grad_()  # the transcoder's layout
    b_enc = torch.zeros(F, device="cuda", dtype=dtype, requires_grad=True)
    leaves = [x, W_encT, b_enc]
    if impl.startswith("mx"):
        grad = _randn(N * k, g=g, dtype=dtype)

        def setup():
            acts = mx.encode(x, W_encT.t(), b_enc, k, "row")
            torch.cuda.synchronize()
            return (acts.values,), {}

    else:
        with torch.no_grad():
            pre = torch.addmm(b_enc, x, W_encT.t())
            acts = mx.topk(pre, k)
            mask = torch.zeros(N, F, device="cuda", dtype=dtype)
            mask[acts.row_ids(), acts.indices] = 1
            del pre, acts
        grad = _randn(N, F, g=g, dtype=dtype)

        def setup():
            out = torch.relu(torch.addmm(b_enc, x, W_encT.t())) * mask
            torch.cuda.synchronize()
            return (out,), {}

    def step(out):
        torch.autograd.grad(out, leaves, grad)
        torch.cuda.synchronize()

    _run(
        benchmark,
        f"encoder backward {dt} N={N} d_in={D} F={F} k={k}",
        impl,
        "encoder_bwd",
        step,
        rounds=10,
        warmup=2,
        setup=setup,
    )
