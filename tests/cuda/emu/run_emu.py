"""Runs the CUDA kernels of csrc/cuda on the CPU emulator (cuda_emu.h) against the CPU kernels: a no-GPU check
of the kernels' logic (indexing, scans, tie rules, guards, barriers). Slow: small shapes only. Not a pytest
module.

    python tests/cuda/emu/run_emu.py            (builds into /tmp/mx_emu_build on first use, a few minutes)
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch.utils.cpp_extension import load

import matryoshka_ext as mx  # the real extension: CPU kernels to compare with
from matryoshka_ext._library import ops as cpu_ops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def build(override_cpu: bool = False):
    """Builds and loads the emulated kernels as torch.ops.mx_emu; override_cpu also installs them as the CPU
    kernels of torch.ops.matryoshka_ext (for dry runs of tests/cuda on the CPU)."""
    name = "mx_emu_override" if override_cpu else "mx_emu"
    build_dir = os.environ.get("MX_EMU_BUILD", "/tmp/mx_emu_build") + ("_override" if override_cpu else "")
    os.makedirs(build_dir, exist_ok=True)
    names = ["emu_ops", "emu_select", "emu_decode", "emu_latent_grad", "emu_register"]
    load(
        name=name,
        sources=[os.path.join(HERE, f"{n}.cpp") for n in names],
        extra_include_paths=[os.path.join(ROOT, "csrc"), HERE],
        extra_cflags=["-O2", "-DMX_CUDA_EMU", "-Wno-unused-function"]
        + (["-DMX_EMU_OVERRIDE_CPU"] if override_cpu else []),
        extra_ldflags=["-lpthread"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.mx_emu


def same(a, b, what):
    for x, y, name in zip(a, b, ["values", "indices", "row_offsets"]):
        if name == "values":
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=f"{what}: {name}")
        else:
            assert torch.equal(x, y), f"{what}: {name} differ\n{x}\n{y}"


def close(u, v, dtype, what):
    assert u.dtype == v.dtype and u.shape == v.shape, (
        f"{what}: {u.dtype} {tuple(u.shape)} vs {v.dtype} {tuple(v.shape)}"
    )
    tol = TOL[dtype]
    u, v = u.double(), v.double()
    scale = max(1.0, v.abs().max().item()) if v.numel() else 1.0
    torch.testing.assert_close(u, v, atol=tol * scale, rtol=tol, msg=lambda m: f"{what}: {m}")


def pre_of(kind, N, F, dtype):
    if kind == "randn":
        x = torch.randn(N, F, dtype=torch.float64)
    elif kind == "ones":
        x = torch.ones(N, F, dtype=torch.float64)
    elif kind == "negative":
        x = -torch.rand(N, F, dtype=torch.float64)
    elif kind == "ties":
        x = torch.randint(-2, 3, (N, F)).double() * 0.5
    elif kind == "uniform12":  # [1, 2): the first 11-bit digit has 4 huge bins; the second pass fits smem
        x = 1 + torch.rand(N, F, dtype=torch.float64)
    elif kind == "nan_inf":
        x = torch.randn(N, F, dtype=torch.float64)
        x[torch.rand(N, F) < 0.05] = float("nan")
        x[torch.rand(N, F) < 0.05] = float("inf")
    else:
        raise ValueError(kind)
    return x.to(dtype)


def check_selection(E):
    cases = [
        (3, 50, 5, "randn"),
        (2, 5000, 40, "randn"),
        (2, 5000, 100, "ones"),
        (2, 20000, 64, "uniform12"),
        (3, 1001, 7, "randn"),
        (2, 300, 300, "randn"),
        (1, 1, 1, "randn"),
        (4, 2000, 30, "negative"),
        (5, 700, 40, "ties"),
        (3, 900, 20, "nan_inf"),
        (1, 9000, 5000, "randn"),
    ]
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for N, F, k, kind in cases:
            if dtype != torch.float32 and F > 5000:
                continue
            pre = pre_of(kind, N, F, dtype)
            for op in ("topk_select", "batch_topk_select"):
                what = f"{op} {dtype} N={N} F={F} k={k} {kind}"
                same(getattr(E, op)(pre, k), getattr(cpu_ops, op)(pre, k), what)
        print(f"  selection {dtype}: ok", flush=True)
    # Non-contiguous input.
    pre = torch.randn(300, 6).t()
    same(E.topk_select(pre, 7), cpu_ops.topk_select(pre, 7), "non-contiguous")


def acts_of(N, F, k, mode, dtype, shuffle=False):
    pre = torch.randn(N, F, dtype=torch.float64)
    pre = torch.where(torch.rand(N, F) < 0.5, pre, -pre.abs()).to(dtype)
    v, i, r = (cpu_ops.topk_select if mode == "row" else cpu_ops.batch_topk_select)(pre, k)
    if shuffle:
        ro = r.tolist()
        perm = torch.cat([torch.randperm(ro[j + 1] - ro[j]) + ro[j] for j in range(N)]).long()
        v, i = v[perm], i[perm]
    return v, i, r


def check_decoder(E):
    cases = [
        # N, F, k, d, ends, mode, shuffle
        (5, 40, 6, 24, [8, 20, 40], "row", False),
        (5, 40, 6, 24, [8, 20, 40], "batch", True),
        (3, 2000, 600, 40, [100, 700, 2000], "row", True),  # rows longer than a shared-memory chunk
        (3, 2000, 600, 40, [100, 700, 2000], "row", False),
        (4, 64, 20, 300, list(range(1, 65)), "row", False),  # 64 prefixes: backward stages terms in S
        (4, 64, 20, 300, list(range(1, 65)), "batch", True),
        (2, 300, 9, 2304, [30, 100, 300], "batch", False),  # several column tiles
        (3, 50, 10, 37, [50], "row", True),  # d not a multiple of 8, one group
        (1, 10, 10, 5, [1, 2, 10], "row", False),  # k = F, N = 1
    ]
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for N, F, k, d, ends, mode, shuffle in cases:
            if dtype in (torch.float16, torch.float64) and d > 300:
                continue
            what = f"{dtype} N={N} F={F} k={k} d={d} m={len(ends)} {mode} shuffle={shuffle}"
            v, i, r = acts_of(N, F, k, mode, dtype, shuffle)
            W = torch.randn(F, d, dtype=torch.float64).to(dtype)
            b, y = (
                torch.randn(d, dtype=torch.float64).to(dtype),
                torch.randn(N, d, dtype=torch.float64).to(dtype),
            )
            close(
                E.nested_decode(v, i, r, W, b, ends),
                cpu_ops.nested_decode(v, i, r, W, b, ends),
                dtype,
                "decode " + what,
            )
            close(
                E.nested_decode(v, i, r, W, None, ends),
                cpu_ops.nested_decode(v, i, r, W, None, ends),
                dtype,
                "decode no bias " + what,
            )
            close(
                E.nested_mse(v, i, r, W, b, y, ends),
                cpu_ops.nested_mse(v, i, r, W, b, y, ends),
                dtype,
                "mse " + what,
            )
            y32 = y.to(acc)
            close(
                E.nested_mse(v, i, r, W, b, y32, ends),
                cpu_ops.nested_mse(v, i, r, W, b, y32, ends),
                dtype,
                "mse acc target " + what,
            )
            gl = torch.rand(len(ends), dtype=acc)
            S1 = E.nested_mse_backward(gl, v, i, r, W, b, y, ends)
            S2 = cpu_ops.nested_mse_backward(gl, v, i, r, W, b, y, ends)
            close(S1, S2, dtype, "mse backward " + what)
            close(
                E.grouped_dot(S2, i, r, W, ends),
                cpu_ops.grouped_dot(S2, i, r, W, ends),
                dtype,
                "grouped_dot " + what,
            )
            for S in (S2, torch.randn(len(ends), N, d, dtype=torch.float64).to(dtype)):
                for out in dict.fromkeys([dtype, acc, torch.float16]):
                    g1, s1 = E.latent_grad(S, v, i, r, ends, F, out)
                    g2, s2 = cpu_ops.latent_grad(S, v, i, r, ends, F, out)
                    assert g1.dtype == out and s1.dtype == out
                    tdt = torch.float16 if out == torch.float16 else dtype
                    close(g1, g2, tdt, f"latent_grad S={S.dtype} out={out} " + what)
                    close(s1, s2, tdt, f"value_sums S={S.dtype} out={out} " + what)
                    if S.dtype == acc and out == acc and dtype in (torch.float32, torch.float64):
                        assert torch.equal(s1, s2), "value sums must match the CPU bit for bit"
                # transposed=True: [d, F] (the encoder weight's layout), the same values as the [F, d] result
                gt1, _ = E.latent_grad(S2, v, i, r, ends, F, acc, True)
                gt2, _ = cpu_ops.latent_grad(S2, v, i, r, ends, F, acc, True)
                assert gt1.shape == (d, F) and gt1.is_contiguous() and gt2.is_contiguous()
                close(gt1, gt2, dtype, "latent_grad transposed " + what)
                close(gt2, cpu_ops.latent_grad(S2, v, i, r, ends, F, acc)[0].t(), dtype, "transposed vs not " + what)
        print(f"  decoder {dtype}: ok", flush=True)


def check_misaligned(E):
    F, d, N = 30, 16, 4
    v, i, r = acts_of(N, F, 5, "row", torch.float32)
    big = torch.randn(F * d + 1)
    W = big[1:].view(F, d)  # contiguous, 4 bytes off 16-byte alignment: scalar paths
    b, y = torch.randn(d), torch.randn(N, d)
    ends = [10, F]
    close(
        E.nested_decode(v, i, r, W, b, ends), cpu_ops.nested_decode(v, i, r, W, b, ends), torch.float32, "mis"
    )
    close(
        E.nested_mse(v, i, r, W, b, y, ends), cpu_ops.nested_mse(v, i, r, W, b, y, ends), torch.float32, "mis"
    )
    S = torch.randn(2, N, d)
    close(E.grouped_dot(S, i, r, W, ends), cpu_ops.grouped_dot(S, i, r, W, ends), torch.float32, "mis dot")
    pre = torch.randn(3 * 1001 + 1)[1:].view(3, 1001)
    same(E.topk_select(pre, 9), cpu_ops.topk_select(pre, 9), "misaligned topk")
    same(E.batch_topk_select(pre, 9), cpu_ops.batch_topk_select(pre, 9), "misaligned batch_topk")
    print("  misaligned: ok", flush=True)


def check_bad_content(E):
    # Out-of-range indices, broken row_offsets: the kernels must guard (a wild 2**40 index would crash here).
    F, d, N = 10, 12, 3
    W, b, y = torch.randn(F, d), torch.randn(d), torch.randn(N, d)
    values, S = torch.randn(6), torch.randn(2, N, d)
    for idx in ([0, 10, -1, 2**40, 3, -(2**40)], [11, 12, 13, 14, 15, 16]):
        for ro in ([0, 2, 4, 6], [0, 5, 2, 6], [-3, 2, 100, 6], [6, 0, 3, 0], [0, 0, 0, 0]):
            i, r = torch.tensor(idx), torch.tensor(ro)
            E.nested_decode(values, i, r, W, b, [4, F])
            E.nested_mse(values, i, r, W, b, y, [4, F])
            E.nested_mse_backward(torch.ones(2), values, i, r, W, b, y, [4, F])
            E.grouped_dot(S, i, r, W, [4, F])
            E.latent_grad(S, values, i, r, [4, F], F, torch.float32)
    # Valid entries of a CSR whose other entries are out of range still decode right.
    i = torch.tensor([0, 99, 3, 4, -5, 9])
    r = torch.tensor([0, 2, 4, 6])
    ok = (i >= 0) & (i < F)
    v0 = values * ok
    i0 = torch.where(ok, i, torch.zeros_like(i))
    close(
        E.nested_decode(values, i, r, W, b, [4, F]),
        cpu_ops.nested_decode(v0, i0, r, W, b, [4, F]),
        torch.float32,
        "guarded decode",
    )
    print("  bad content: ok", flush=True)


def main():
    torch.manual_seed(int(os.environ.get("MX_TEST_SEED", "0")))
    t0 = time.time()
    E = build()
    print(f"emu build: {time.time() - t0:.0f} s", flush=True)
    check_selection(E)
    check_decoder(E)
    check_misaligned(E)
    check_bad_content(E)
    print(f"emu: all ok in {time.time() - t0:.0f} s")
    assert mx.has_cuda_kernels() in (True, False)


if __name__ == "__main__":
    sys.exit(main())
