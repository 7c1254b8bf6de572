"""AuxK (Gao et al. 2024): the auxiliary loss that moves dead latents towards the residual the live ones leave.

Latents that have not fired for >= dead_tokens tokens are "dead". Among them the top aux_k relu(pre-activations)
per token reconstruct the detached residual e = y - r_full with W_dec and no decoder bias:
    aux = aux_penalty * mean((e_hat - e)^2)
The selection comes from the encoder's own pre-activations (`ops.encode_aux`: one GEMM for both selections, the
dead columns read in place), so AuxK costs a sparse decode of N x aux_k entries and their share of the encoder's
sparse backward, never a second encoder-sized GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .sparse import SparseActs

# The AuxK decode runs on a dense [N, n_dead] matrix when aux_k * ops.AUX_DENSE_RATIO >= n_dead (see there),
# through the sparse nested_mse otherwise; the encoder backward of the AuxK entries makes the same choice.


@dataclass(frozen=True)
class AuxPlan:
    """The dead latents of one step: dead [n_dead] int64 ascending latent ids, aux_k = min(aux_k, n_dead)."""

    dead: torch.Tensor
    aux_k: int


def plan(dead_mask: torch.Tensor, aux_k: int, aux_penalty: float) -> AuxPlan | None:
    """dead_mask [F] bool -> the step's AuxK plan, or None when AuxK is off or nothing is dead."""
    if aux_k <= 0 or aux_penalty <= 0:
        return None
    dead = dead_mask.nonzero().squeeze(1)
    n_dead = dead.numel()  # a sync on GPU: the selection's output size depends on it
    return AuxPlan(dead, min(aux_k, n_dead)) if n_dead > 0 else None


class _DenseAuxMSE(torch.autograd.Function):
    """mean((dense @ W_dec[dead] - residual)^2) over the dead columns only, forward and backward in one node.

    values [N * kk] (kk per row) at columns `cols` [N, kk] (positions in `dead`), W_dec [F, d]; returns the loss in
    the accumulation dtype, bit for bit the loss the same expression gives through autograd. The backward takes
    dL/drecon = 2 g / numel * diff once and runs the two GEMMs against the dead rows, instead of autograd's chain of
    pow, mean and sub backwards with their [N, d] temporaries; W_dec's gradient rows are written through
    ops.index_add_2d (index_select's own backward is a scatter_add over an expanded index, ~8x slower on CPU).
    """

    @staticmethod
    def forward(ctx, values, W_dec, dead, cols, residual, acc):
        n, kk = cols.shape
        dense = values.new_zeros(n, dead.numel()).scatter_(1, cols, values.view(n, kk))
        rows = W_dec.index_select(0, dead).to(values.dtype)
        # in place: the product (or its cast to acc) is a fresh tensor; the same subtraction, one [N, d] buffer less
        diff = (dense @ rows).to(acc).sub_(residual.to(acc))
        ctx.save_for_backward(dense, rows, diff, dead, cols)
        ctx.W_shape, ctx.W_dtype = W_dec.shape, W_dec.dtype
        return diff.pow(2).mean()

    @staticmethod
    def backward(ctx, grad):
        dense, rows, diff, dead, cols = ctx.saved_tensors
        g_recon = (diff * (2 * grad / diff.numel())).to(dense.dtype)
        g_values = g_W = None
        if ctx.needs_input_grad[0]:
            g_values = (g_recon @ rows.t()).gather(1, cols).view(-1)
        if ctx.needs_input_grad[1]:
            g_W = ops.index_add_2d(g_recon.new_zeros(ctx.W_shape, dtype=ctx.W_dtype), 0, dead, dense.t() @ g_recon)
        return g_values, g_W, None, None, None, None


def aux_mse(aux_acts: SparseActs, W_dec: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """mean((aux_acts @ W_dec - residual)^2) in the accumulation dtype, differentiable in aux_acts.values and W_dec.

    aux_acts [N, F] with the same number of entries in every row (indices among `dead`), W_dec [F, d_out],
    residual [N, d_out] (detached, W_dec's dtype).
    """
    n, n_dead = aux_acts.num_rows, dead.numel()
    kk = aux_acts.nnz // max(n, 1)
    acc = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    if kk * ops.AUX_DENSE_RATIO >= n_dead:
        # Dense layout over the dead columns only: [N, n_dead] (not [N, F]); each entry's column from a table.
        cols = ops.dead_positions(dead, aux_acts.indices, aux_acts.num_latents).view(n, kk)
        return _DenseAuxMSE.apply(aux_acts.values, W_dec, dead, cols, residual, acc)
    zero_bias = W_dec.new_zeros(W_dec.shape[1])
    return ops.nested_mse(aux_acts, W_dec, zero_bias, residual, [W_dec.shape[0]])[0].to(acc)
