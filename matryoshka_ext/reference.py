"""Plain-PyTorch reference of every op: readable, slow. The oracle the C++ and CUDA kernels must match.

Conventions shared with the kernels:
- selection ranks relu(pre): every NaN ranks highest and is kept as NaN, +Inf next; values <= 0 (-Inf included)
  become 0; ties go to the lower (flat) index. Nothing raises on NaN/Inf and every index stays in [0, F);
- selected indices ascend within each row;
- decoding is sparse: an entry whose value is exactly 0 contributes nothing, so its decoder row is never read
  (a NaN/Inf row of an unselected latent does not turn the output into 0 * Inf = NaN); everything else follows
  IEEE arithmetic (NaN/Inf in selected values, decoder rows, biases or targets propagate; nothing raises);
- arithmetic in float32 (float64 for float64 inputs); decoded outputs are cast back to W_dec's dtype, losses
  stay in the accumulation dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .sparse import SparseActs


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a storage dtype: float64 stays, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int, f: int) -> SparseActs:
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=vals.device)
    offsets[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return SparseActs(vals, cols, offsets, f)


def topk(pre: torch.Tensor, k: int) -> SparseActs:
    """Per row, the k largest entries of relu(pre) [N, F] -> SparseActs with exactly k entries per row."""
    n, f = pre.shape
    act = torch.relu(pre)
    top = torch.sort(act, dim=1, descending=True, stable=True).indices[:, :k]
    cols = top.sort(dim=1).values
    rows = torch.arange(n, device=pre.device).repeat_interleave(k)
    return _csr(rows, cols.reshape(-1), act.gather(1, cols).reshape(-1), n, f)


def batch_topk(pre: torch.Tensor, k: int) -> SparseActs:
    """The k*N largest entries of relu(pre) [N, F] over the whole batch (ties: lower flat index wins)."""
    n, f = pre.shape
    act = torch.relu(pre).reshape(-1)
    flat = torch.sort(act, descending=True, stable=True).indices[: k * n].sort().values
    return _csr(flat // f, flat % f, act[flat], n, f)


def encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int, mode: str = "row") -> SparseActs:
    """x [N, d_in], W_enc [d_in, F], b_enc [F] -> SparseActs of select(relu(x @ W_enc + b_enc))."""
    pre = torch.addmm(b_enc, x, W_enc)
    return topk(pre, k) if mode == "row" else batch_topk(pre, k)


def encode_aux(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    mode: str,
    dead: torch.Tensor,
    aux_k: int,
) -> tuple[SparseActs, SparseActs]:
    """encode() plus AuxK's selection: per row the top aux_k of relu(pre) over the columns `dead` (ascending
    latent ids) -> (acts [N, F], aux_acts [N, F] with aux_k entries per row, indices = latent ids)."""
    pre = torch.addmm(b_enc, x, W_enc)
    acts = topk(pre, k) if mode == "row" else batch_topk(pre, k)
    sub = topk(pre[:, dead], aux_k)
    return acts, SparseActs(sub.values, dead[sub.indices], sub.row_offsets, W_enc.shape[1])


def _prefix_decodes(acts: SparseActs, W: torch.Tensor, bias: torch.Tensor, group_ends: Sequence[int]) -> list:
    """[N, d] reconstruction per prefix end, in W's dtype: bias + sum of value * W[index] over nonzero entries."""
    acts.validate()
    v = acts.values.to(W.dtype)
    rows, idx = acts.row_ids(), acts.indices
    zero = torch.zeros((), dtype=W.dtype, device=W.device)
    # Sparse rule: a zero activation reads nothing, so a NaN/Inf row behind it counts as 0 (a dense matmul would
    # give 0 * Inf = NaN). Finite rows are kept as they are, so d r / d value is W[index] for every entry.
    W_rows = W[idx]
    W_rows = torch.where((v != 0)[:, None] | W_rows.isfinite(), W_rows, zero)
    contrib = v[:, None] * W_rows
    outs = []
    for e in group_ends:
        keep = (idx < e)[:, None]
        part = torch.where(keep, contrib, zero)
        outs.append(bias.expand(acts.num_rows, -1).index_add(0, rows, part))
    return outs


def nested_decode(
    acts: SparseActs, W_dec: torch.Tensor, b_dec: torch.Tensor | None, group_ends: Sequence[int]
) -> torch.Tensor:
    """One decode per prefix: [m, N, d_out], r_i = acts[:, :e_i] @ W_dec[:e_i] + b_dec (sparse rule above)."""
    acc = acc_dtype(W_dec.dtype)
    W = W_dec.to(acc)
    bias = b_dec.to(acc) if b_dec is not None else torch.zeros(W.shape[1], dtype=acc, device=W.device)
    return torch.stack(_prefix_decodes(acts, W, bias, group_ends)).to(W_dec.dtype)


def nested_mse(
    acts: SparseActs,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    target: torch.Tensor,
    group_ends: Sequence[int],
) -> torch.Tensor:
    """[m] per-prefix mean((r_i - target)^2) over N and d_out, computed in the accumulation dtype."""
    acc = acc_dtype(W_dec.dtype)
    W, b, y = W_dec.to(acc), b_dec.to(acc), target.to(acc)
    return torch.stack([((r - y) ** 2).mean() for r in _prefix_decodes(acts, W, b, group_ends)])
