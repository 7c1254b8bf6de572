"""Public ops (the contract in DESIGN.md) over the compiled kernels, with fake kernels and autograd.

Every op validates its arguments (in C++, shared by CPU and CUDA) and raises ValueError / TypeError naming the
argument. Gradients follow DESIGN.md: the decoder backward uses suffix sums S_j = sum_{i>=j} dL/dr_i, the
encoder backward touches only the selected entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._library import ops as _ops
from .reference import acc_dtype
from .sparse import SparseActs

_LIB = "matryoshka_ext"

# ---------------------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes only, so torch.compile and opcheck can trace the ops.


def _fake_csr(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = pre.shape[0]
    return pre.new_empty(n * k), pre.new_empty(n * k, dtype=torch.int64), pre.new_empty(n + 1, dtype=torch.int64)


@torch.library.register_fake(f"{_LIB}::topk_select")
def _(pre, k):
    return _fake_csr(pre, k)


@torch.library.register_fake(f"{_LIB}::batch_topk_select")
def _(pre, k):
    return _fake_csr(pre, k)


@torch.library.register_fake(f"{_LIB}::encode")
def _(x, W_enc, b_enc, k, batch):
    return _fake_csr(x, k)


@torch.library.register_fake(f"{_LIB}::encode_aux")
def _(x, W_enc, b_enc, k, batch, dead, aux_k):
    return _fake_csr(x, k) + _fake_csr(x, aux_k)


@torch.library.register_fake(f"{_LIB}::nested_decode")
def _(values, indices, row_offsets, W, bias, group_ends):
    return W.new_empty(len(group_ends), row_offsets.shape[0] - 1, W.shape[1])


@torch.library.register_fake(f"{_LIB}::nested_mse")
def _(values, indices, row_offsets, W, bias, target, group_ends):
    return W.new_empty(len(group_ends), dtype=acc_dtype(W.dtype))


@torch.library.register_fake(f"{_LIB}::nested_mse_backward")
def _(grad_loss, values, indices, row_offsets, W, bias, target, group_ends):
    return W.new_empty(len(group_ends), row_offsets.shape[0] - 1, W.shape[1], dtype=acc_dtype(W.dtype))


@torch.library.register_fake(f"{_LIB}::nested_mse_backward_dot")
def _(grad_loss, values, indices, row_offsets, W, bias, target, group_ends):
    S = W.new_empty(len(group_ends), row_offsets.shape[0] - 1, W.shape[1], dtype=acc_dtype(W.dtype))
    return S, W.new_empty(indices.shape[0])


@torch.library.register_fake(f"{_LIB}::grouped_dot")
def _(S, indices, row_offsets, W, group_ends):
    return W.new_empty(indices.shape[0])


@torch.library.register_fake(f"{_LIB}::latent_grad")
def _(S, values, indices, row_offsets, group_ends, num_latents, dtype, transposed=False):
    shape = (S.shape[2], num_latents) if transposed else (num_latents, S.shape[2])
    return S.new_empty(shape, dtype=dtype), S.new_empty(num_latents, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# Autograd.


def _row_ids(row_offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    counts = row_offsets[1:] - row_offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=nnz)


def _select_setup(ctx, inputs, output):
    values, indices, row_offsets = output
    ctx.shape = inputs[0].shape
    ctx.save_for_backward(values, indices, row_offsets)


def _select_backward(ctx, grad_values, _gi, _gr):
    # d relu(pre)/d pre = [pre > 0]; a selected value is relu(pre), so (value > 0) is that mask.
    values, indices, row_offsets = ctx.saved_tensors
    n, f = ctx.shape
    grad = grad_values.new_zeros(n * f)
    flat = _row_ids(row_offsets, values.numel()) * f + indices
    grad.index_put_((flat,), grad_values * (values > 0))
    return grad.view(n, f), None


for _name in ("topk_select", "batch_topk_select"):
    torch.library.register_autograd(f"{_LIB}::{_name}", _select_backward, setup_context=_select_setup)


def _encode_setup(ctx, inputs, output):
    x, W_enc, b_enc, _k, _batch = inputs
    values, indices, row_offsets = output
    ctx.save_for_backward(x, W_enc, values, indices, row_offsets)


def _encode_backward(ctx, grad_values, _gi, _gr):
    x, W_enc, values, indices, row_offsets = ctx.saved_tensors
    f = W_enc.shape[1]
    g = grad_values * (values > 0)  # dL/dpre at the selected entries; zero elsewhere
    dx = dW = db = None
    if ctx.needs_input_grad[0]:
        # dx_n = sum_f g_nf W_enc[:, f]: a sparse decode against W_enc^T.
        dx = _ops.nested_decode(g, indices, row_offsets, W_enc.t().contiguous(), None, [f])[0]
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # written as [d_in, F] by the kernel: W_enc's own layout, so autograd keeps it without a transposing copy
        dW, db = _ops.latent_grad(x.unsqueeze(0), g, indices, row_offsets, [f], f, W_enc.dtype, True)
    return dx, dW, db, None, None


torch.library.register_autograd(f"{_LIB}::encode", _encode_backward, setup_context=_encode_setup)


# AuxK (decode, its gradients, the encoder gradient) runs as dense GEMMs over the dead columns ([N, n_dead]) when
# aux_k * this >= n_dead, through the sparse kernels otherwise; either way nothing of size N x F. A GEMM
# multiply-add costs far less than a gathered one: measured on 2-core CPU, N=4096 d=640 aux_k=320, the AuxK part
# of a step took 87 ms dense vs 269 ms sparse at 819 dead latents (density 1/2.6) and ~300-340 ms either way
# at 3277 (1/10, within run-to-run noise; after the register-blocked sparse kernels, 2026-12-06); the sparse
# form wins only when the dead latents are many times aux_k.
AUX_DENSE_RATIO = 16


def index_add_2d(dst: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst.index_add_(dim, index, src) for a contiguous 2-D dst, through one flat 1-D index_add_.

    ATen's 2-D index_add_ walks the index one slice at a time (tens of ms for 800 rows of [8192, 640] on CPU);
    over flat element ids it is one vectorised scatter. Returns dst.
    """
    rows, cols = dst.shape
    if dim == 0:
        flat = (index.unsqueeze(1) * cols + torch.arange(cols, device=dst.device)).reshape(-1)
    else:
        flat = (torch.arange(rows, device=dst.device).unsqueeze(1) * cols + index.unsqueeze(0)).reshape(-1)
    dst.view(-1).index_add_(0, flat, src.reshape(-1).to(dst.dtype))
    return dst


def dead_positions(dead: torch.Tensor, indices: torch.Tensor, num_latents: int) -> torch.Tensor:
    """Position of each latent id of `indices` within the ascending id list `dead` (a table gather, not a search)."""
    table = torch.zeros(num_latents, dtype=torch.int64, device=dead.device)
    table[dead] = torch.arange(dead.numel(), device=dead.device)
    return table.index_select(0, indices)  # half the time of table[indices] (advanced indexing) on CPU


def _concat_rows(
    v1: torch.Tensor, i1: torch.Tensor, r1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k2: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise concatenation of a CSR (v1, i1, r1) and a CSR with k2 entries in every row: (values, indices,
    row_offsets), each row holding its entries of the first, then of the second (ids not ascending across the two;
    the reductions that take it do not need them to be)."""
    n = r1.numel() - 1
    counts1 = r1[1:] - r1[:-1]
    r = torch.zeros_like(r1)
    torch.cumsum(counts1 + k2, 0, out=r[1:])
    shift = (r[:-1] - r1[:-1]).repeat_interleave(counts1, output_size=v1.numel())
    pos1 = torch.arange(v1.numel(), device=v1.device) + shift
    pos2 = ((r[:-1] + counts1).unsqueeze(1) + torch.arange(k2, device=v1.device)).reshape(-1)
    total = v1.numel() + n * k2
    v = v1.new_empty(total).index_put_((pos1,), v1).index_put_((pos2,), v2)
    i = i1.new_empty(total).index_put_((pos1,), i1).index_put_((pos2,), i2)
    return v, i, r


def _encode_aux_setup(ctx, inputs, output):
    x, W_enc, dead = inputs[0], inputs[1], inputs[5]
    ctx.save_for_backward(x, W_enc, dead, *output)


def _encode_aux_backward(ctx, grad_values, _gi, _gr, grad_aux, _gai, _gar):
    # Both selections are entries of the same pre = x @ W_enc + b_enc, so dL/dpre is sparse at the union of
    # their entries; the parts add up (an entry that both selected gets both gradients, as through a dense pre).
    x, W_enc, dead, values, indices, row_offsets, aux_values, aux_indices, aux_row_offsets = ctx.saved_tensors
    n, f, n_dead = x.shape[0], W_enc.shape[1], dead.numel()
    kk = aux_values.numel() // n
    want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    g = grad_values * (values > 0)
    ga = grad_aux * (aux_values > 0)
    dense = kk * AUX_DENSE_RATIO >= n_dead
    # sparse AuxK: both selections as one CSR (per row the main entries, then the AuxK ones), so one kernel pass
    # writes one [d_in, F] gradient instead of two that are then added
    part = (g, indices, row_offsets) if dense else _concat_rows(g, indices, row_offsets, ga, aux_indices, kk)
    dx = dW = db = None
    if want_x:
        dx = _ops.nested_decode(*part, W_enc.t().contiguous(), None, [f])[0]
    if want_w:
        # [d_in, F]: W_enc's own layout (no transposing copy in autograd)
        dW, db = _ops.latent_grad(x.unsqueeze(0), *part, [f], f, W_enc.dtype, True)
    if dense:
        # dL/dpre over the dead columns only, [N, n_dead]; its two GEMMs against the dead columns of W_enc and x.
        cols = dead_positions(dead, aux_indices, f).view(n, kk)
        G = ga.new_zeros(n, n_dead).scatter_(1, cols, ga.view(n, kk).to(ga.dtype))
        if want_x:
            dx = dx.addmm_(G, W_enc.index_select(1, dead).t())
        if want_w:
            index_add_2d(dW, 1, dead, x.t() @ G)
            db.index_add_(0, dead, G.sum(0, dtype=acc_dtype(G.dtype)).to(db.dtype))
    return dx, dW, db, None, None, None, None


torch.library.register_autograd(f"{_LIB}::encode_aux", _encode_aux_backward, setup_context=_encode_aux_setup)


def _decoder_grads(ctx, S, values, indices, row_offsets, W, gv=None):
    """Gradients of (values, W, bias) from suffix sums S [m, N, d] (gv: the values' gradient when already known)."""
    gW = gb = None
    if ctx.needs_input_grad[0] and gv is None:
        gv = _ops.grouped_dot(S, indices, row_offsets, W, ctx.group_ends)
    if ctx.needs_input_grad[3]:
        gW, _ = _ops.latent_grad(S, values, indices, row_offsets, ctx.group_ends, W.shape[0], W.dtype)
    if ctx.needs_input_grad[4]:
        gb = S[0].sum(0).to(W.dtype)
    return gv, gW, gb


def _decode_setup(ctx, inputs, output):
    values, indices, row_offsets, W, _bias, group_ends = inputs
    ctx.group_ends = list(group_ends)
    ctx.save_for_backward(values, indices, row_offsets, W)


def _decode_backward(ctx, grad_out):
    values, indices, row_offsets, W = ctx.saved_tensors
    S = grad_out.to(acc_dtype(W.dtype)).flip(0).cumsum(0).flip(0)
    gv, gW, gb = _decoder_grads(ctx, S, values, indices, row_offsets, W)
    return gv, None, None, gW, gb, None


torch.library.register_autograd(f"{_LIB}::nested_decode", _decode_backward, setup_context=_decode_setup)


def _mse_setup(ctx, inputs, output):
    values, indices, row_offsets, W, bias, target, group_ends = inputs
    ctx.group_ends = list(group_ends)
    ctx.save_for_backward(values, indices, row_offsets, W, bias, target)


def _mse_backward(ctx, grad_loss):
    values, indices, row_offsets, W, bias, target = ctx.saved_tensors
    args = (grad_loss, values, indices, row_offsets, W, bias, target, ctx.group_ends)
    if ctx.needs_input_grad[0]:  # S and the values' gradient in one pass (the CPU kernel reuses the cached rows)
        S, gv = _ops.nested_mse_backward_dot(*args)
    else:
        S, gv = _ops.nested_mse_backward(*args), None
    gv, gW, gb = _decoder_grads(ctx, S, values, indices, row_offsets, W, gv)
    gy = (-S[0]).to(target.dtype) if ctx.needs_input_grad[5] else None
    return gv, None, None, gW, gb, gy, None


torch.library.register_autograd(f"{_LIB}::nested_mse", _mse_backward, setup_context=_mse_setup)

# ---------------------------------------------------------------------------------------------------------
# Public API.


_INT64_MAX = 2**63 - 1


def _int_arg(v: object, name: str) -> int:
    """An integer argument (int, numpy or 0-d integer tensor; not bool or float) as a Python int."""
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if isinstance(v, int):
        i = v  # the common case, kept free of __index__ calls so torch.compile traces it
    else:
        try:
            i = v.__index__()
        except (TypeError, RuntimeError) as exc:  # e.g. a float or multi-element tensor
            raise TypeError(f"{name} must be an int, got {v!r}") from exc
    if not -_INT64_MAX - 1 <= i <= _INT64_MAX:  # the schema's int is int64: say so instead of a binder error
        raise ValueError(f"{name} = {i} is out of the int64 range")
    return i


def _k(k: object) -> int:
    return _int_arg(k, "k")


def _tensor(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _ends(group_ends: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(group_ends, torch.Tensor):
        if group_ends.dim() != 1:
            shape = tuple(group_ends.shape)
            raise TypeError(f"group_ends must be a 1-D sequence of ints, got a tensor of shape {shape}")
        group_ends = group_ends.tolist()
    if isinstance(group_ends, (str, bytes)) or not hasattr(group_ends, "__iter__"):
        raise TypeError(f"group_ends must be a sequence of ints, got {type(group_ends).__name__} {group_ends!r}")
    group_ends = list(group_ends)
    if not all(hasattr(e, "__index__") and not isinstance(e, bool) for e in group_ends):
        raise TypeError(f"group_ends must be a sequence of ints, got {group_ends!r}")
    return [_int_arg(e, "group_ends entry") for e in group_ends]


def _same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the first tensor on another device than the first one given."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}: use one device")


def _check_acts(acts: SparseActs, W_dec: torch.Tensor) -> None:
    """acts is a SparseActs over as many latents as W_dec has rows (the kernels index W_dec with acts.indices)."""
    if not isinstance(acts, SparseActs):
        raise TypeError(f"acts must be a SparseActs, got {type(acts).__name__}")
    for name in ("values", "indices", "row_offsets"):
        _tensor(getattr(acts, name), f"acts.{name}")
    _int_arg(acts.num_latents, "acts.num_latents")
    _tensor(W_dec, "W_dec")
    if W_dec.dim() == 2 and W_dec.shape[0] != acts.num_latents:
        raise ValueError(
            f"W_dec must have acts.num_latents = {acts.num_latents} rows [F, d_out], got shape {tuple(W_dec.shape)}"
        )


def topk(pre: torch.Tensor, k: int) -> SparseActs:
    """Per row, the k largest entries of relu(pre).

    pre [N, F] -> SparseActs with k entries per row (indices ascending; ties: lower index wins).
    """
    values, indices, row_offsets = _ops.topk_select(_tensor(pre, "pre"), _k(k))
    return SparseActs(values, indices, row_offsets, pre.shape[1])


def batch_topk(pre: torch.Tensor, k: int) -> SparseActs:
    """The k*N largest entries of relu(pre) [N, F] across the whole batch (ties: lower flat index wins)."""
    values, indices, row_offsets = _ops.batch_topk_select(_tensor(pre, "pre"), _k(k))
    return SparseActs(values, indices, row_offsets, pre.shape[1])


def encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, mode: str = "row") -> SparseActs:
    """select(relu(x @ W_enc + b_enc)) with a sparse backward.

    x [N, d_in], W_enc [d_in, F], b_enc [F]; mode "row" (TopK) or "batch" (BatchTopK) -> SparseActs [N, F].
    """
    if mode not in ("row", "batch"):
        raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
    for name, t in (("x", x), ("W_enc", W_enc), ("b_enc", b_enc)):
        _tensor(t, name)
    _same_device(x=x, W_enc=W_enc, b_enc=b_enc)
    values, indices, row_offsets = _ops.encode(x, W_enc, b_enc, _k(k), mode == "batch")
    return SparseActs(values, indices, row_offsets, W_enc.shape[1])


def encode_aux(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    mode: str,
    dead: torch.Tensor,
    aux_k: int,
) -> tuple[SparseActs, SparseActs]:
    """encode() plus AuxK's selection from the same pre-activations, with one sparse backward for both.

    dead [n_dead] int64: strictly ascending latent ids; 0 < aux_k <= n_dead. Returns (acts, aux_acts), both
    SparseActs [N, F]; aux_acts holds per row the top aux_k of relu(pre) over the dead columns (indices are
    latent ids, ascending; ties: lower id), so it decodes against the full W_dec.
    """
    if mode not in ("row", "batch"):
        raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
    for name, t in (("x", x), ("W_enc", W_enc), ("b_enc", b_enc), ("dead", dead)):
        _tensor(t, name)
    _same_device(x=x, W_enc=W_enc, b_enc=b_enc, dead=dead)
    out = _ops.encode_aux(x, W_enc, b_enc, _k(k), mode == "batch", dead, _int_arg(aux_k, "aux_k"))
    f = W_enc.shape[1]
    return SparseActs(*out[:3], f), SparseActs(*out[3:], f)


def nested_decode(
    acts: SparseActs, W_dec: torch.Tensor, b_dec: torch.Tensor | None, group_ends: Sequence[int]
) -> torch.Tensor:
    """Every prefix reconstruction in one sparse pass.

    acts [N, F], W_dec [F, d_out], b_dec [d_out] -> [m, N, d_out]; r_i = acts[:, :e_i] @ W_dec[:e_i] + b_dec.
    """
    _check_acts(acts, W_dec)
    if b_dec is not None:
        _tensor(b_dec, "b_dec")
    _same_device(**{"acts.values": acts.values, "W_dec": W_dec, "b_dec": b_dec})
    return _ops.nested_decode(acts.values, acts.indices, acts.row_offsets, W_dec, b_dec, _ends(group_ends))


def nested_mse(
    acts: SparseActs,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    target: torch.Tensor,
    group_ends: Sequence[int],
) -> torch.Tensor:
    """[m] per-prefix mean((r_i - target)^2) over N and d_out, without building the [m, N, d_out] output.

    Returned in float32 (float64 for float64 inputs); differentiable in acts.values, W_dec, b_dec and target.
    """
    _check_acts(acts, W_dec)
    _tensor(b_dec, "b_dec")
    _tensor(target, "target")
    _same_device(**{"acts.values": acts.values, "W_dec": W_dec, "b_dec": b_dec, "target": target})
    return _ops.nested_mse(acts.values, acts.indices, acts.row_offsets, W_dec, b_dec, target, _ends(group_ends))
