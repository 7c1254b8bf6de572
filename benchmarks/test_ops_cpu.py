"""CPU op benchmarks at the offline-default shapes, each against its plain-PyTorch baseline in the same run.

Run: .venv/bin/python -m pytest benchmarks/test_ops_cpu.py --benchmark-json=out.json
then: .venv/bin/python -m benchmarks.report out.json   (markdown table of medians and same-run ratios)
"""

import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext import reference as ref

N, D, F, K = 4096, 640, 8192, 32
ENDS = [1024, 2048, 4096, 8192]  # four groups


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    W_enc = torch.randn(D, F, generator=g) / D**0.5
    b_enc = torch.zeros(F)
    W_dec = torch.randn(F, D, generator=g) / D**0.5
    b_dec = torch.zeros(D)
    y = torch.randn(N, D, generator=g)
    acts = mx.topk(x @ W_enc, K)
    return dict(x=x, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, y=y, acts=acts)


def _nested_step(lib, d):
    values = d["acts"].values.clone().requires_grad_()
    W = d["W_dec"].clone().requires_grad_()
    b = d["b_dec"].clone().requires_grad_()
    acts = mx.SparseActs(values, d["acts"].indices, d["acts"].row_offsets, F)
    lib.nested_mse(acts, W, b, d["y"], ENDS).sum().backward()


@pytest.mark.benchmark(group="nested_mse fwd+bwd N=4096 d=640 F=8192 k=32 m=4")
@pytest.mark.parametrize("impl", ["mx", "dense reference"])
def test_nested_mse(benchmark, data, impl):
    lib = mx if impl == "mx" else ref
    benchmark.pedantic(_nested_step, args=(lib, data), rounds=5 if impl == "mx" else 3, warmup_rounds=1)


@pytest.mark.benchmark(group="per-row TopK N=4096 F=8192 k=32")
@pytest.mark.parametrize("impl", ["mx.topk", "torch.topk"])
def test_topk(benchmark, data, impl):
    pre = data["x"] @ data["W_enc"]
    fn = (lambda: mx.topk(pre, K)) if impl == "mx.topk" else (lambda: torch.topk(torch.relu(pre), K, dim=1))
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)


@pytest.mark.benchmark(group="BatchTopK N=4096 F=8192 k=32")
@pytest.mark.parametrize("impl", ["mx.batch_topk", "torch.topk flat"])
def test_batch_topk(benchmark, data, impl):
    pre = data["x"] @ data["W_enc"]
    if impl == "mx.batch_topk":
        fn = lambda: mx.batch_topk(pre, K)
    else:
        fn = lambda: torch.topk(torch.relu(pre).flatten(), K * N)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="encoder fwd+bwd (BatchTopK) N=4096 d=640 F=8192 k=32")
@pytest.mark.parametrize("impl", ["mx.encode", "dense autograd"])
def test_encoder(benchmark, data, impl):
    lib = mx if impl == "mx.encode" else ref

    def step():
        x = data["x"].clone().requires_grad_()
        W = data["W_enc"].clone().requires_grad_()
        b = data["b_enc"].clone().requires_grad_()
        lib.encode(x, W, b, K, "batch").values.sum().backward()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
