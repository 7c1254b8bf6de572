"""Initialisation: random unit decoder rows, then a data-dependent encoder, b_dec and activation scales.

``reset_parameters``: random unit decoder rows; W_enc = init_encoder_scale * W_dec^T (random unit columns when
d_in != d_out); biases 0; W_skip 0 (the skip path starts off and is learnt).
``initialize_from_batch`` on the first batch (raw x [N, d_in], y [N, d_out]):
1. activation scales (when the config scales activations);
2. b_dec = mean of the scaled target;
3. encoder directions E (``init_encoder``): "linear" sets E = W_lin @ W_dec^T, W_lin the ridge least-squares map
   from centred x to centred y, so each latent starts by reading the projection of the linearly predicted target
   onto its own decoder row (for y = x this is the SAE init W_dec^T); "transpose" keeps E = W_dec^T. With
   W_enc = W_dec^T a transcoder's initial output is noise, every latent is pushed below zero and most die
   (Gemma 3 270M layer 12: 73% dead vs 2% after 300 steps);
4. b_enc = -mean(x) @ E (latents read centred inputs), and E, b_enc are scaled by the s > 0 that minimises
   sum_i w_i ||r_i - y||^2 on this batch (closed form: positive scaling keeps the selection), times
   ``init_encoder_scale``. W_skip is 0 here, so the fit is that of the sparse part alone.
"""

from __future__ import annotations

from typing import Any

import torch

from .scaling import mean_squared_norm_scale


def _ops():
    from .. import ops

    return ops


@torch.no_grad()
def reset_parameters(model: Any, generator: torch.Generator | None = None) -> None:
    """Random init of ``model`` (a MatryoshkaTranscoder) in place; global RNG unless a CPU ``generator`` is given."""
    cfg = model.cfg
    W = torch.randn(cfg.dict_size, cfg.d_out, generator=generator, dtype=torch.float32)
    W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    model.W_dec.copy_(W)
    if cfg.d_in == cfg.d_out:
        E = W.t().clone()
    else:
        E = torch.randn(cfg.d_in, cfg.dict_size, generator=generator, dtype=torch.float32)
        E /= E.norm(dim=0, keepdim=True).clamp_min(1e-12)
    model.W_enc.copy_(E * cfg.init_encoder_scale)
    model.b_enc.zero_()
    model.b_dec.zero_()
    if model.W_skip is not None:
        model.W_skip.zero_()


@torch.no_grad()
def initialize_from_batch(model: Any, x: torch.Tensor, y: torch.Tensor, set_scales: bool = True) -> None:
    """Data-dependent init of ``model`` from raw x [N, d_in], y [N, d_out] (steps 1-4 of the module docstring)."""
    cfg = model.cfg
    if set_scales and cfg.activation_scaling != "none":
        per_dim = cfg.activation_scaling == "unit_rms"
        model.set_scales(
            mean_squared_norm_scale(x, x.shape[1] if per_dim else 1),
            mean_squared_norm_scale(y, y.shape[1] if per_dim else 1),
        )
    f64 = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    xs = x.to(f64) * model.x_scale.to(f64)
    ys = y.to(f64) * model.y_scale.to(f64)
    x_mean, y_mean = xs.mean(0), ys.mean(0)
    model.b_dec.copy_(y_mean)
    W_dec = model.W_dec.to(f64)
    if cfg.init_encoder == "linear":
        xc, yc = xs - x_mean, ys - y_mean
        gram = xc.T @ xc
        ridge = 1e-3 * gram.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(gram.shape[0], dtype=f64, device=gram.device)
        W_lin = torch.linalg.solve(gram + ridge * eye, xc.T @ yc)  # [d_in, d_out]
        E = W_lin @ W_dec.T
    else:
        E = model.W_enc.to(f64) / cfg.init_encoder_scale  # reset_parameters' W_dec^T (or random columns)
    b = -(x_mean @ E)
    # fit the overall scale s: r_i(s) - b_dec = s * R_i, so s = sum_i w_i <R_i, yc> / sum_i w_i |R_i|^2
    dt = model.W_enc.dtype if model.W_enc.dtype != torch.float16 else torch.float32
    acts = _ops().encode(xs.to(dt), E.to(dt), b.to(dt), cfg.k, mode=cfg.selection)
    zero = torch.zeros(cfg.d_out, dtype=dt, device=x.device)
    R = _ops().nested_decode(acts, W_dec.to(dt), zero, cfg.group_ends).to(f64)  # [m, N, d_out]
    w = torch.tensor(cfg.weights, dtype=f64, device=x.device)
    num = (w * (R * (ys - y_mean)).sum(dim=(1, 2))).sum()
    den = (w * R.pow(2).sum(dim=(1, 2))).sum()
    s = float(num / den) if float(den) > 0 and float(num) > 0 else 1.0
    s *= cfg.init_encoder_scale
    model.W_enc.copy_(E * s)
    model.b_enc.copy_(b * s)
