"""The affine skip path (``TranscoderConfig.skip_connection``): y_hat_p = decode_p(encode(x)) + x @ W_skip.

W_skip [d_in, d_out] is a trained parameter, zero at initialisation, shared by every prefix p (as in Gemma Scope 2's
``affine_skip_connection`` and sparsify's skip transcoders; Paulo et al. 2025). In scaled units the skip term is
s = x' @ W_skip.

Training leaves the fused kernels alone: the sparse part is fitted to the target t = y' - s, built through autograd,
so ``mx.nested_mse(acts, W_dec, b_dec, t, ends)[i] == mean((r_i + s - y')^2)`` is exactly prefix i's MSE with the
skip term, and the op's gradient with respect to its target (-S_1, the suffix sum over all prefixes) flows on to
W_skip (dL/dW_skip = -x'^T S_1) and, through x', to nothing else (x is data). AuxK's residual y' - (r_full + s) is
then t - r_full: dead latents learn what neither the live latents nor the skip path explain.
"""

from __future__ import annotations

import torch

from ..reference import acc_dtype


def skip_term(xs: torch.Tensor, W_skip: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """[N, d_out] xs @ W_skip in ``dt`` (xs [N, d_in] scaled input, W_skip [d_in, d_out]); differentiable."""
    return xs.to(dt) @ W_skip.to(dt)


def sparse_target(ys: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """[N, d_out] what the sparse part must reconstruct: ys - skip (accumulation dtype, cast back to ys' dtype);
    differentiable in ``skip``."""
    acc = acc_dtype(ys.dtype)
    return (ys.to(acc) - skip.to(acc)).to(ys.dtype)
