"""Op fuzz cases as plain JSON specs: generated from a `random.Random`, built into real arguments, run, judged.

One vocabulary serves both runners: hypothesis drives the generators in-process (through `st.randoms()`), and
tests/fuzz/child.py replays a batch of the same specs in a separate python process, so that a segfault or an
abort inside the extension is seen by the parent as a failure of one named case instead of killing pytest.

A spec is {"op": NAME, "args": [...], "kwargs": {...}, "expect": EXPECT, "why": TEXT} where
- arguments are JSON values; a dict with one of the keys below stands for an object built at run time:
  {"t": {...}} a tensor (shape, dtype, device, fill, layout), {"acts": {...}} a SparseActs,
  {"dtype": "int64"} a torch.dtype, {"np_int": 3} a numpy integer;
- EXPECT is ["raises", EXC_TYPE, REGEX] (the message must match REGEX, which names the argument) or
  ["returns", CHECK] for valid inputs with NaN/Inf/huge values that must run and satisfy CHECK's invariants.

This module imports only torch, numpy and matryoshka_ext, so the child can load it without pytest.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import numpy as np
import torch

import matryoshka_ext as mx
from matryoshka_ext._library import ops as raw

FLOAT_DTYPES = ["float32", "float64", "bfloat16", "float16"]
BAD_DTYPES = ["int64", "int32", "int8", "uint8", "bool", "complex64"]
SPECIALS = ["nan", "inf", "-inf", "huge", "-huge", "tiny", "-0"]

# ---------------------------------------------------------------------------------------------------------
# Building arguments from specs.


def _special_value(name: str, dtype: torch.dtype) -> float:
    fi = torch.finfo(dtype)
    return {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "huge": fi.max,
        "-huge": -fi.max,
        "tiny": fi.tiny / 4 if dtype in (torch.float32, torch.float64) else fi.tiny,  # subnormal where it exists
        "-0": -0.0,
    }[name]


def build_tensor(spec: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """A tensor from {"shape", "dtype", "device", "fill", "values", "specials", "layout", "ties"}."""
    shape = list(spec["shape"])
    dtype = getattr(torch, spec.get("dtype", "float32"))
    device = spec.get("device", "cpu")
    fill = spec.get("fill", "randn")
    layout = spec.get("layout", "contig")
    # Build [.., last] contiguous, then derive the requested layout with the same logical shape.
    if fill == "values":
        t = torch.tensor(spec["values"], dtype=dtype).reshape(shape)
    elif dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if spec.get("ties"):
            t = torch.round(t * 2) / 2  # many exact ties and exact zeros
        if spec.get("scale"):
            t = t * spec["scale"]
        t = t.to(dtype)
        flat = t.reshape(-1)
        for pos, name in spec.get("specials", []):
            if flat.numel():
                flat[pos % flat.numel()] = _special_value(name, dtype if dtype.is_floating_point else torch.float32)
    elif dtype == torch.bool:
        t = torch.rand(shape, generator=gen) > 0.5
    else:
        t = torch.randint(0, 5, shape, generator=gen).to(dtype)
    if layout == "transposed" and t.dim() == 2:
        t = t.t().contiguous().t()  # same values, column-major strides
    elif layout == "strided" and t.dim() >= 1:
        wide = torch.zeros(shape[:-1] + [shape[-1] * 2], dtype=dtype)
        wide[..., ::2] = t
        t = wide[..., ::2]
    elif layout == "expanded" and t.dim() == 2 and t.shape[0] > 0:
        t = t[:1].expand(t.shape[0], -1)
    if device != "cpu":
        t = t.to(device)
    return t


def build(value: Any, gen: torch.Generator) -> Any:
    """Turn a JSON argument into the object it stands for (recursively for lists)."""
    if isinstance(value, dict):
        if "t" in value:
            return build_tensor(value["t"], gen)
        if "acts" in value:
            a = value["acts"]
            return mx.SparseActs(build(a["values"], gen), build(a["indices"], gen), build(a["row_offsets"], gen),
                                 build(a["num_latents"], gen))
        if "dtype" in value:
            return getattr(torch, value["dtype"])
        if "np_int" in value:
            return np.int64(value["np_int"])
        if "tuple" in value:
            return tuple(build(v, gen) for v in value["tuple"])
        raise ValueError(f"unknown argument spec {value!r}")
    if isinstance(value, list):
        return [build(v, gen) for v in value]
    return value


def _acts_call(method: str):
    def call(acts: mx.SparseActs):
        return getattr(acts, method)()

    return call


def _segfault() -> None:
    """Reads address 0: a real SIGSEGV, used only to test that the subprocess runner names the crashing case."""
    import ctypes

    ctypes.string_at(0)


OPS = {
    "debug.segfault": _segfault,
    "mx.topk": mx.topk,
    "mx.batch_topk": mx.batch_topk,
    "mx.encode": mx.encode,
    "mx.nested_decode": mx.nested_decode,
    "mx.nested_mse": mx.nested_mse,
    "acts.to_dense": _acts_call("to_dense"),
    "acts.validate": _acts_call("validate"),
    "raw.topk_select": raw.topk_select,
    "raw.batch_topk_select": raw.batch_topk_select,
    "raw.encode": raw.encode,
    "raw.nested_decode": raw.nested_decode,
    "raw.nested_mse": raw.nested_mse,
    "raw.nested_mse_backward": raw.nested_mse_backward,
    "raw.grouped_dot": raw.grouped_dot,
    "raw.latent_grad": raw.latent_grad,
}


def _config_op(name: str):
    """The config / CLI loaders of tests/fuzz/config_cases.py (imported on first use)."""
    try:
        from . import config_cases  # as part of the tests package
    except ImportError:
        import config_cases  # as a plain sibling module, in child.py

    return {"config.load": config_cases.load, "cli.train": config_cases.cli_train}[name]


def run_spec(spec: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Build and call one spec; returns {"status": "raised"|"returned", "type", "msg", "problem"}."""
    gen = torch.Generator().manual_seed(seed)
    if spec["op"] in OPS:
        op = OPS[spec["op"]]
        args = [build(a, gen) for a in spec["args"]]
        kwargs = {k: build(v, gen) for k, v in spec.get("kwargs", {}).items()}
    else:  # config / CLI cases: the arguments are plain data
        op, args, kwargs = _config_op(spec["op"]), spec["args"], spec.get("kwargs", {})
    try:
        out = op(*args, **kwargs)
    except Exception as exc:  # judged by `judge`: which exception and what it says is the point of the test
        return {"status": "raised", "type": type(exc).__name__, "msg": str(exc).split("\nException raised")[0][:400],
                "problem": None, "mro": [c.__name__ for c in type(exc).__mro__]}
    return {"status": "returned", "type": None, "msg": "", "problem": check_output(spec, args, out),
            "mro": []}


def judge(spec: dict[str, Any], outcome: dict[str, Any]) -> str | None:
    """None when the outcome is what the spec expects, else a description of the mismatch."""
    exp = spec["expect"]
    if exp[0] == "raises":
        want, pattern = exp[1], exp[2]
        if outcome["status"] != "raised":
            return f"expected {want} matching {pattern!r}, but the call returned"
        if want not in outcome["mro"]:
            return f"expected {want} matching {pattern!r}, got {outcome['type']}: {outcome['msg']}"
        if not re.search(pattern, outcome["msg"]):
            return f"{outcome['type']} does not name the problem ({pattern!r}): {outcome['msg']}"
        if len(exp) > 3 and re.search(exp[3], outcome["msg"]):
            return f"{outcome['type']} is about something else (matches {exp[3]!r}): {outcome['msg']}"
        return None
    if outcome["status"] != "returned":
        return f"valid input raised {outcome['type']}: {outcome['msg']}"
    return outcome["problem"]


def check_output(spec: dict[str, Any], args: list[Any], out: Any) -> str | None:
    """Invariants of a returned result that hold whatever NaN/Inf the inputs held."""
    check = spec["expect"][1] if spec["expect"][0] == "returns" else None
    if check == "select":
        pre_shape = args[0].shape if spec["op"] != "mx.encode" else (args[0].shape[0], args[1].shape[1])
        n, f = pre_shape
        k = args[-1] if spec["op"] != "mx.encode" else args[3]
        return csr_problem(out, n, f, k, per_row=spec["op"] != "mx.batch_topk" and spec.get("mode") != "batch")
    if check == "decode":
        m = len(args[-1])
        want = (m, args[0].num_rows, args[1].shape[1])
        return None if tuple(out.shape) == want else f"decode shape {tuple(out.shape)} != {want}"
    if check == "mse":
        return None if tuple(out.shape) == (len(args[-1]),) else f"mse shape {tuple(out.shape)}"
    return None


def csr_problem(acts: mx.SparseActs, n: int, f: int, k: int, per_row: bool) -> str | None:
    """Structural contract of a selection result: counts, offsets, indices in range and ascending per row."""
    ro, ix = acts.row_offsets, acts.indices
    if acts.values.numel() != n * k or ix.numel() != n * k:
        return f"nnz {acts.values.numel()} != k*N = {n * k}"
    if ro.numel() != n + 1 or int(ro[0]) != 0 or int(ro[-1]) != n * k or bool((ro[1:] < ro[:-1]).any()):
        return f"bad row_offsets {ro.tolist()}"
    if per_row and not torch.equal(ro[1:] - ro[:-1], torch.full((n,), k, dtype=torch.int64)):
        return f"TopK row counts {(ro[1:] - ro[:-1]).tolist()} != {k}"
    if ix.numel() and (int(ix.min()) < 0 or int(ix.max()) >= f):
        return f"index out of range [0, {f}): {ix.tolist()}"
    for r in range(n):
        row = ix[int(ro[r]) : int(ro[r + 1])]
        if row.numel() > 1 and not bool((row[1:] > row[:-1]).all()):
            return f"row {r} indices not strictly ascending: {row.tolist()}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Generators. Each returns one spec; `rng` is a random.Random (hypothesis's st.randoms() or a seeded one).


def T(shape, dtype="float32", **kw) -> dict:
    return {"t": {"shape": list(shape), "dtype": dtype, **kw}}


def IDX(values) -> dict:
    return T([len(values)], "int64", fill="values", values=list(values))


def _dims(rng: random.Random) -> dict[str, int]:
    F = rng.randint(1, 12)
    return {"N": rng.randint(1, 6), "F": F, "k": rng.randint(1, F), "d": rng.randint(1, 5), "din": rng.randint(1, 5)}


def _csr(rng: random.Random, N: int, F: int) -> tuple[list[int], list[int]]:
    """Random valid CSR content: per row a random ascending subset of [0, F) (rows may be empty)."""
    idx, ro = [], [0]
    for _ in range(N):
        row = sorted(rng.sample(range(F), rng.randint(0, F)))
        idx += row
        ro.append(len(idx))
    return idx, ro


def _acts_spec(values, indices, row_offsets, num_latents) -> dict:
    return {"acts": {"values": values, "indices": indices, "row_offsets": row_offsets, "num_latents": num_latents}}


def _bad_k_values(rng: random.Random, F: int, public: bool) -> tuple[Any, str, str]:
    """(k, exception type, regex) for an invalid k."""
    ints = [0, -1, -rng.randint(2, 10**6), F + 1, F + rng.randint(2, 1000), 2**62, 2**63 - 1, -(2**63)]
    if public:
        choice = rng.randint(0, 2)
        if choice == 1:
            return rng.choice([2**63, 2**64 + 3, -(2**63) - 1, 10**30]), "ValueError", r"\bk\b"
        if choice == 2:
            bad = rng.choice([2.0, 1.5, "3", None, True, False, [1], math.nan, {"tuple": [1]}])
            return bad, "TypeError", r"\bk must be an int"
    return rng.choice(ints), "ValueError", r"\bk must satisfy 0 < k <= F"


def gen_select_invalid(rng: random.Random) -> dict:
    d = _dims(rng)
    N, F, k = d["N"], d["F"], d["k"]
    public = rng.random() < 0.6
    which = rng.choice(["topk", "batch_topk"])
    op = f"mx.{which}" if public else f"raw.{which}_select"
    dtype = rng.choice(FLOAT_DTYPES)
    pre = T([N, F], dtype, layout=rng.choice(["contig", "transposed", "strided"]))
    kind = rng.choice(["k", "k", "dim", "empty", "nolatents", "dtype", "nontensor"] if public else
                      ["k", "dim", "empty", "nolatents", "dtype"])
    if kind == "k":
        k, exc, pat = _bad_k_values(rng, F, public)
    elif kind == "dim":
        pre = T(rng.choice([[], [F], [N, F, 2], [1, N, F]]), dtype)
        exc, pat = "ValueError", r"pre must be 2-D"
        k = 1
    elif kind == "empty":
        pre = T([0, F], dtype)
        exc, pat = "ValueError", r"pre: empty batch"
    elif kind == "nolatents":
        pre, k = T([N, 0], dtype), rng.choice([0, 1])
        exc, pat = "ValueError", r"pre: no latents"
    elif kind == "dtype":
        pre = T([N, F], rng.choice(BAD_DTYPES))
        exc, pat = "TypeError", r"pre must be float32"
    else:
        pre = rng.choice([[[1.0] * F] * N, None, 3, "pre"])
        exc, pat = "TypeError", r"pre must be a torch.Tensor"
    return {"op": op, "args": [pre, k], "expect": ["raises", exc, pat], "why": f"select/{kind}"}


def gen_encode_invalid(rng: random.Random) -> dict:
    d = _dims(rng)
    N, F, k, din = d["N"], d["F"], d["k"], d["din"]
    dtype = rng.choice(FLOAT_DTYPES)
    public = rng.random() < 0.7
    mode = rng.choice(["row", "batch"])
    x, W, b = T([N, din], dtype), T([din, F], dtype), T([F], dtype)
    kinds = ["k", "xdim", "Wdim", "bdim", "din", "bsize", "dtype", "intdtype", "empty", "nolatents"]
    if public:
        kinds += ["device", "mode", "nontensor"]
    kind = rng.choice(kinds)
    if kind == "k":
        k, exc, pat = _bad_k_values(rng, F, public)
    elif kind == "xdim":
        x, exc, pat = T(rng.choice([[din], [N, din, 1]]), dtype), "ValueError", r"x must be 2-D"
    elif kind == "Wdim":
        W, exc, pat = T(rng.choice([[din], [din, F, 1]]), dtype), "ValueError", r"W_enc must be 2-D"
    elif kind == "bdim":
        b, exc, pat = T(rng.choice([[1, F], []]), dtype), "ValueError", r"b_enc must be 1-D"
    elif kind == "din":
        W, exc, pat = T([din + rng.randint(1, 3), F], dtype), "ValueError", r"W_enc must have d_in"
    elif kind == "bsize":
        b, exc, pat = T([F + rng.choice([-1, 1, 5]) if F > 1 else F + 1], dtype), "ValueError", r"b_enc must have F"
    elif kind == "dtype":
        other = rng.choice([t for t in FLOAT_DTYPES if t != dtype])
        if rng.random() < 0.5:
            W, exc, pat = T([din, F], other), "TypeError", r"x and W_enc must have the same dtype"
        else:
            b, exc, pat = T([F], other), "TypeError", r"x and b_enc must have the same dtype"
    elif kind == "intdtype":
        bad = rng.choice(BAD_DTYPES)
        x, W, b = T([N, din], bad), T([din, F], bad), T([F], bad)
        exc, pat = "TypeError", r"x must be float32"
    elif kind == "empty":
        x, exc, pat = T([0, din], dtype), "ValueError", r"x: empty batch"
    elif kind == "nolatents":
        W, b, k = T([din, 0], dtype), T([0], dtype), rng.choice([0, 1])
        exc, pat = "ValueError", r"W_enc: no latents"
    elif kind == "device":
        which = rng.choice(["W_enc", "b_enc"])
        if which == "W_enc":
            W = T([din, F], dtype, device="meta")
        else:
            b = T([F], dtype, device="meta")
        exc, pat = "ValueError", rf"{which} is on meta"
    elif kind == "mode":
        mode, exc, pat = rng.choice(["col", "", "ROW", None, 1, "batchtopk"]), "ValueError", r"mode must be"
    else:
        which = rng.choice(["x", "W_enc", "b_enc"])
        bad = rng.choice([None, [1.0], 2.5])
        x, W, b = (bad if which == "x" else x), (bad if which == "W_enc" else W), (bad if which == "b_enc" else b)
        exc, pat = "TypeError", rf"{which} must be a torch.Tensor"
    if public:
        return {"op": "mx.encode", "args": [x, W, b, k], "kwargs": {"mode": mode}, "expect": ["raises", exc, pat],
                "why": f"encode/{kind}"}
    return {"op": "raw.encode", "args": [x, W, b, k, mode == "batch"], "expect": ["raises", exc, pat],
            "why": f"encode/{kind}"}


def _bad_group_ends(rng: random.Random, F: int) -> tuple[Any, str, str]:
    """(group_ends, exception type, regex) for invalid prefix ends of F latents."""
    kind = rng.choice(["empty", "repeat", "decrease", "short", "long", "zero", "neg", "float", "bool", "str",
                       "none", "int", "huge", "nested"])
    good = sorted(rng.sample(range(1, F), min(F - 1, rng.randint(0, 3)))) + [F]
    if kind == "empty":
        return [], "ValueError", r"group_ends must not be empty"
    if kind == "repeat":
        return good[:1] + good, "ValueError", r"group_ends must be strictly increasing"
    if kind == "decrease":
        return [F, max(F - 1, 1)] if F > 1 else [1, 1], "ValueError", r"group_ends must be strictly increasing"
    if kind == "short":
        return [F - 1] if F > 1 else [0], "ValueError", r"group_ends must (end at|be strictly)"
    if kind == "long":
        return good[:-1] + [F + rng.randint(1, 50)], "ValueError", r"group_ends must end at the number of latents"
    if kind == "zero":
        return [0] + good, "ValueError", r"group_ends must be strictly increasing positive"
    if kind == "neg":
        return [-rng.randint(1, 5)] + good, "ValueError", r"group_ends must be strictly increasing positive"
    if kind == "float":
        return good[:-1] + [float(F)], "TypeError", r"group_ends must be a sequence of ints"
    if kind == "bool":
        return [True] + good[1:] if len(good) > 1 else [True], "TypeError", r"group_ends must be a sequence of ints"
    if kind == "str":
        return rng.choice(["abc", str(F)]), "TypeError", r"group_ends must be a sequence of ints"
    if kind == "none":
        return None, "TypeError", r"group_ends must be a sequence of ints"
    if kind == "int":
        return F, "TypeError", r"group_ends must be a sequence of ints"
    if kind == "huge":
        return good[:-1] + [2**64], "ValueError", r"group_ends entry = \d+ is out of the int64 range"
    return [good], "TypeError", r"group_ends must be a sequence of ints"


def gen_decode_invalid(rng: random.Random) -> dict:
    """Public nested_decode / nested_mse with one bad argument (acts built as a valid random CSR)."""
    d = _dims(rng)
    N, F, dd = d["N"], d["F"], d["d"]
    dtype = rng.choice(FLOAT_DTYPES)
    idx, ro = _csr(rng, N, F)
    acts = _acts_spec(T([len(idx)], dtype), IDX(idx), IDX(ro), F)
    W, b, y = T([F, dd], dtype), T([dd], dtype), T([N, dd], rng.choice(FLOAT_DTYPES))
    ends = sorted(rng.sample(range(1, F), min(F - 1, rng.randint(0, 3)))) + [F]
    mse = rng.random() < 0.5
    kinds = ["acts", "Wrows", "Wdim", "Wempty", "Wdtype", "Wint", "bsize", "bdim", "bdtype", "ends", "device",
             "index", "offsets", "Wnontensor"]
    if mse:
        kinds += ["yshape", "ydim", "ydtype", "ynone", "bnone"]
    kind = rng.choice(kinds)
    if kind == "acts":
        acts = rng.choice([T([N, F], dtype), None, {"tuple": [1, 2, 3]}])
        exc, pat = "TypeError", r"acts must be a SparseActs"
    elif kind == "Wrows":
        W = T([F + rng.choice([1, 2, 7]), dd], dtype)
        exc, pat = "ValueError", r"W_dec must have acts.num_latents"
    elif kind == "Wdim":
        W, exc, pat = T(rng.choice([[F], [F, dd, 1]]), dtype), "ValueError", r"W_dec must be 2-D"
    elif kind == "Wempty":
        W, b, y = T([F, 0], dtype), T([0], dtype), T([N, 0], dtype)
        exc, pat = "ValueError", r"W_dec must be non-empty"
    elif kind == "Wdtype":
        W = T([F, dd], rng.choice([t for t in FLOAT_DTYPES if t != dtype]))
        exc, pat = "TypeError", r"W_dec and values must have the same dtype"
    elif kind == "Wint":
        W, exc, pat = T([F, dd], rng.choice(BAD_DTYPES)), "TypeError", r"W_dec must be float32"
    elif kind == "Wnontensor":
        W, exc, pat = rng.choice([None, [[1.0] * dd] * F, 1.0]), "TypeError", r"W_dec must be a torch.Tensor"
    elif kind == "bsize":
        b, exc, pat = T([dd + rng.randint(1, 3)], dtype), "ValueError", r"b_dec must have \d+ entries"
    elif kind == "bdim":
        b, exc, pat = T([1, dd], dtype), "ValueError", r"b_dec must be 1-D"
    elif kind == "bdtype":
        b = T([dd], rng.choice([t for t in FLOAT_DTYPES if t != dtype]))
        exc, pat = "TypeError", r"b_dec and weight must have the same dtype"
    elif kind == "bnone":
        b, exc, pat = None, "TypeError", r"b_dec must be a torch.Tensor"
    elif kind == "ends":
        ends, exc, pat = _bad_group_ends(rng, F)
    elif kind == "device":
        which = rng.choice(["W_dec", "b_dec"] + (["target"] if mse else []))
        if which == "W_dec":
            W = T([F, dd], dtype, device="meta")
        elif which == "b_dec":
            b = T([dd], dtype, device="meta")
        else:
            y = T([N, dd], dtype, device="meta")
        exc, pat = "ValueError", rf"{which} is on meta"
    elif kind == "index":
        bad = rng.choice([F, F + rng.randint(1, 100), -1, -rng.randint(2, 100), 2**62, -(2**62)])
        if not idx:
            idx, ro = [0], [0] * N + [1]
        pos = rng.randrange(len(idx))
        idx = idx[:pos] + [bad] + idx[pos + 1 :]
        acts = _acts_spec(T([len(idx)], dtype), IDX(idx), IDX(ro), F)
        exc, pat = "ValueError", r"indices must lie in \[0, \d+\)"
    elif kind == "offsets":
        nnz = len(idx)
        variant = rng.choice(["start", "end", "decrease", "huge", "neg"])
        ro = list(ro)
        if variant == "start":
            ro[0] = rng.choice([1, -1, 2**62])
        elif variant == "end":
            ro[-1] = nnz + rng.choice([1, 5, 2**40])
        elif variant == "decrease" and N >= 2 and nnz >= 1:
            ro = [0] + [nnz] + [0] * (N - 2) + [nnz] if N > 2 else [0, nnz + 1, nnz]
        elif variant == "huge":
            ro[-1] = 2**62
        else:
            ro[-1] = -1
        if ro[0] == 0 and ro[-1] == nnz and all(b >= a for a, b in zip(ro, ro[1:])):
            ro[-1] = nnz + 1  # the variant happened to be valid (e.g. decrease with one row): break the end
        acts = _acts_spec(T([nnz], dtype), IDX(idx), IDX(ro), F)
        exc, pat = "ValueError", r"row_offsets must"
    elif kind == "yshape":
        y = T([N + rng.randint(1, 3), dd] if rng.random() < 0.5 else [N, dd + 1], dtype)
        exc, pat = "ValueError", r"target must have shape"
    elif kind == "ydim":
        y, exc, pat = T([N * dd], dtype), "ValueError", r"target must be 2-D"
    elif kind == "ydtype":
        y, exc, pat = T([N, dd], rng.choice(BAD_DTYPES)), "TypeError", r"target must be float32"
    else:
        y, exc, pat = rng.choice([None, 0.0]), "TypeError", r"target must be a torch.Tensor"
    if mse:
        return {"op": "mx.nested_mse", "args": [acts, W, b, y, ends], "expect": ["raises", exc, pat],
                "why": f"nested_mse/{kind}"}
    return {"op": "mx.nested_decode", "args": [acts, W, b, ends], "expect": ["raises", exc, pat],
            "why": f"nested_decode/{kind}"}


def gen_raw_csr_invalid(rng: random.Random) -> dict:
    """The raw torch.ops with hand-made CSR arrays that lie about their content or shape."""
    d = _dims(rng)
    N, F, dd = d["N"], d["F"], d["d"]
    dtype = rng.choice(FLOAT_DTYPES)
    acc = "float64" if dtype == "float64" else "float32"
    idx, ro = _csr(rng, N, F)
    if not idx:
        idx, ro = [rng.randrange(F)], [0] * N + [1]
    nnz = len(idx)
    ends = sorted(rng.sample(range(1, F), min(F - 1, rng.randint(0, 3)))) + [F]
    m = len(ends)
    op = rng.choice(["nested_decode", "nested_mse", "nested_mse_backward", "grouped_dot", "latent_grad"])
    values, indices, offsets = T([nnz], dtype), IDX(idx), IDX(ro)
    kind = rng.choice(["index", "offsets", "idxdtype", "rodtype", "length", "rodim", "ro1", "idxdim", "op"])
    if kind == "index":
        bad = rng.choice([F, F + rng.randint(1, 10**6), -1, 2**62, -(2**62)])
        pos = rng.randrange(nnz)
        indices = IDX(idx[:pos] + [bad] + idx[pos + 1 :])
        exc, pat = "ValueError", r"indices must lie in"
    elif kind == "offsets":
        r2 = list(ro)
        r2[rng.choice([0, -1])] += rng.choice([1, -1, 2**50])
        if r2[0] == 0 and r2[-1] == nnz:
            r2[-1] += 1
        offsets = IDX(r2)
        exc, pat = "ValueError", r"row_offsets must"
    elif kind == "idxdtype":
        indices = T([nnz], rng.choice(["int32", "float32", "int16"]), fill="values", values=idx)
        exc, pat = "TypeError", r"indices (and row_offsets )?must be int64"
    elif kind == "rodtype":
        offsets = T([N + 1], rng.choice(["int32", "float64"]), fill="values", values=ro)
        exc, pat = "TypeError", r"(row_offsets|indices and row_offsets) must be int64"
    elif kind == "length" and op != "grouped_dot":
        values = T([nnz + rng.choice([1, 3])], dtype)
        exc, pat = "ValueError", r"indices must have as many entries as values"
    elif kind == "rodim":
        offsets = T([1, N + 1], "int64", fill="values", values=ro)
        exc, pat = "ValueError", r"row_offsets must be 1-D"
    elif kind == "ro1":
        offsets = IDX([0])
        exc, pat = "ValueError", r"(row_offsets must have N\+1 >= 2|S must have shape)"
    elif kind == "idxdim":
        indices = T([1, nnz], "int64", fill="values", values=idx)
        exc, pat = "ValueError", r"indices must be 1-D"
    else:
        kind = "op"
        exc, pat = "ValueError", ""  # filled per op below
    W, b, y = T([F, dd], dtype), T([dd], dtype), T([N, dd], dtype)
    S = T([m, N, dd], acc)
    if kind == "op":
        if op == "nested_decode":
            exc, pat, ends = _bad_group_ends_raw(rng, F)
        elif op == "nested_mse":
            y, exc, pat = T([N + 1, dd], dtype), "ValueError", r"target must have shape"
        elif op == "nested_mse_backward":
            choice = rng.choice(["shape", "dtype"])
            gl = T([m + 1], acc) if choice == "shape" else T([m], rng.choice(["int64", "bool"]))
            exc, pat = ("ValueError", r"grad_loss must have shape") if choice == "shape" else (
                "TypeError", r"grad_loss must be float32")
            return {"op": "raw.nested_mse_backward", "args": [gl, values, indices, offsets, W, b, y, ends],
                    "expect": ["raises", exc, pat], "why": "nested_mse_backward/grad_loss"}
        elif op == "grouped_dot":
            S, exc, pat = T([m, N + 1, dd], acc), "ValueError", r"S must have shape"
        else:
            choice = rng.choice(["numlat", "dtype", "S"])
            if choice == "numlat":
                return {"op": "raw.latent_grad", "args": [S, values, indices, offsets, ends, F + 1, {"dtype": acc}],
                        "expect": ["raises", "ValueError", r"group_ends must end at the number of latents"],
                        "why": "latent_grad/num_latents"}
            if choice == "dtype":
                return {"op": "raw.latent_grad",
                        "args": [S, values, indices, offsets, ends, F, {"dtype": rng.choice(["int64", "bool"])}],
                        "expect": ["raises", "TypeError", r"dtype must be float32"], "why": "latent_grad/dtype"}
            S, exc, pat = T([m, N + 2, dd], acc), "ValueError", r"S must have shape"
    if kind == "length" and op == "grouped_dot":
        op = "nested_decode"
        values = T([nnz + 1], dtype)
        exc, pat = "ValueError", r"indices must have as many entries as values"
    args = {
        "nested_decode": [values, indices, offsets, W, b, ends],
        "nested_mse": [values, indices, offsets, W, b, y, ends],
        "nested_mse_backward": [T([m], acc), values, indices, offsets, W, b, y, ends],
        "grouped_dot": [S, indices, offsets, W, ends],
        "latent_grad": [S, values, indices, offsets, ends, F, {"dtype": acc}],
    }[op]
    return {"op": f"raw.{op}", "args": args, "expect": ["raises", exc, pat], "why": f"raw.{op}/{kind}"}


def _bad_group_ends_raw(rng: random.Random, F: int) -> tuple[str, str, list[int]]:
    """Invalid int lists only: the raw schema's int[] turns anything else into a binder error."""
    while True:
        ends, exc, pat = _bad_group_ends(rng, F)
        if exc == "ValueError" and all(isinstance(e, int) and -(2**63) <= e < 2**63 for e in ends):
            return exc, pat, ends


def gen_acts_invalid(rng: random.Random) -> dict:
    """SparseActs.to_dense / validate on a container that breaks the CSR contract."""
    d = _dims(rng)
    N, F = d["N"], d["F"]
    idx, ro = _csr(rng, N, F)
    if not idx:
        idx, ro = [0], [0] * N + [1]
    values, num = T([len(idx)]), F
    kind = rng.choice(["index", "offsets", "numlat", "numlat_type", "values_dim", "idx_dtype", "nontensor"])
    if kind == "index":
        pos = rng.randrange(len(idx))
        idx = idx[:pos] + [rng.choice([F, -1, 2**62])] + idx[pos + 1 :]
        exc, pat = "ValueError", r"acts.indices out of range"
    elif kind == "offsets":
        ro = list(ro)
        ro[rng.choice([0, -1])] += rng.choice([1, -1, 7])
        if ro[0] == 0 and ro[-1] == len(idx):
            ro[-1] += 1
        exc, pat = "ValueError", r"acts.row_offsets must"
    elif kind == "numlat":
        num, exc, pat = rng.choice([0, -1, -(10**9)]), "ValueError", r"acts.num_latents must be positive"
    elif kind == "numlat_type":
        num, exc, pat = rng.choice([float(F), None, "F", True]), "TypeError", r"acts.num_latents must be an int"
    elif kind == "values_dim":
        values, exc, pat = T([len(idx), 1]), "ValueError", r"acts.values must be 1-D"
    elif kind == "idx_dtype":
        exc, pat = "TypeError", r"acts.indices and acts.row_offsets must be int64"
        acts = _acts_spec(values, T([len(idx)], "int32", fill="values", values=idx), IDX(ro), num)
        return {"op": rng.choice(["acts.to_dense", "acts.validate"]), "args": [acts],
                "expect": ["raises", exc, pat], "why": f"acts/{kind}"}
    else:
        field = rng.choice(["values", "indices", "row_offsets"])
        acts = _acts_spec(None if field == "values" else values, None if field == "indices" else IDX(idx),
                          None if field == "row_offsets" else IDX(ro), num)
        return {"op": rng.choice(["acts.to_dense", "acts.validate"]), "args": [acts],
                "expect": ["raises", "TypeError", rf"acts.{field} must be a torch.Tensor"], "why": "acts/nontensor"}
    acts = _acts_spec(values, IDX(idx), IDX(ro), num)
    return {"op": rng.choice(["acts.to_dense", "acts.validate"]), "args": [acts], "expect": ["raises", exc, pat],
            "why": f"acts/{kind}"}


def gen_nonfinite_valid(rng: random.Random) -> dict:
    """Valid calls whose tensors hold NaN/Inf/huge/subnormal values: must return a well-formed result."""
    d = _dims(rng)
    N, F, k, dd, din = d["N"], d["F"], d["k"], d["d"], d["din"]
    dtype = rng.choice(FLOAT_DTYPES)

    def specials(n: int) -> list:
        return [[rng.randrange(max(n, 1)), rng.choice(SPECIALS)] for _ in range(rng.randint(1, max(1, n)))]

    which = rng.choice(["topk", "batch_topk", "encode", "decode", "mse"])
    if which in ("topk", "batch_topk"):
        pre = T([N, F], dtype, specials=specials(N * F), ties=rng.random() < 0.5)
        return {"op": f"mx.{which}", "args": [pre, k], "expect": ["returns", "select"], "why": f"nonfinite/{which}"}
    if which == "encode":
        mode = rng.choice(["row", "batch"])
        args = [T([N, din], dtype, specials=specials(N * din)), T([din, F], dtype, specials=specials(din * F)),
                T([F], dtype, specials=specials(F)), k]
        return {"op": "mx.encode", "args": args, "kwargs": {"mode": mode}, "mode": mode,
                "expect": ["returns", "select"], "why": "nonfinite/encode"}
    idx, ro = _csr(rng, N, F)
    acts = _acts_spec(T([len(idx)], dtype, specials=specials(len(idx))), IDX(idx), IDX(ro), F)
    W, b = T([F, dd], dtype, specials=specials(F * dd)), T([dd], dtype, specials=specials(dd))
    ends = sorted(rng.sample(range(1, F), min(F - 1, rng.randint(0, 3)))) + [F]
    if which == "decode":
        return {"op": "mx.nested_decode", "args": [acts, W, b, ends], "expect": ["returns", "decode"],
                "why": "nonfinite/decode"}
    y = T([N, dd], dtype, specials=specials(N * dd))
    return {"op": "mx.nested_mse", "args": [acts, W, b, y, ends], "expect": ["returns", "mse"],
            "why": "nonfinite/mse"}


INVALID_GENERATORS = [gen_select_invalid, gen_encode_invalid, gen_decode_invalid, gen_raw_csr_invalid,
                      gen_acts_invalid]


def gen_any_case(rng: random.Random) -> dict:
    """An invalid case from any family (4 in 5) or a non-finite valid one."""
    if rng.random() < 0.2:
        return gen_nonfinite_valid(rng)
    return rng.choice(INVALID_GENERATORS)(rng)
