"""Activation scaling: the scalars that bring x and y to unit mean squared norm, and their fold into saved weights.

Training works on x' = x * x_scale and y' = y * y_scale (fp32 scalars). A saved transcoder runs on raw activations:
its latents are a' = a / y_scale, so (with y = y' / y_scale)
    W_enc' = W_enc * x_scale / y_scale    b_enc' = b_enc / y_scale    threshold' = threshold / y_scale
    b_dec' = b_dec / y_scale              W_dec' = W_dec (unit rows stay unit rows)
    W_skip' = W_skip * x_scale / y_scale  (x @ W_skip' = (x' @ W_skip) / y_scale)
and both scales become 1.
"""

from __future__ import annotations

import torch

from ..reference import acc_dtype

#: parameters whose fold multiplies by x_scale / y_scale, and those that only divide by y_scale
_BY_SX_OVER_SY = ("W_enc", "W_skip")
_BY_INV_SY = ("b_enc", "b_dec")


def mean_squared_norm_scale(t: torch.Tensor, target: float = 1.0) -> float:
    """The scalar s with mean_n ||s * t_n||^2 = target for t [N, d] (fp64 accumulation)."""
    ms = t.double().pow(2).sum(1).mean().item()
    if not ms > 0:
        raise ValueError("cannot scale activations whose mean squared norm is 0")
    return (target / ms) ** 0.5


def scaled(t: torch.Tensor, scale: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """t * scale computed in the accumulation dtype of ``dt``, returned in ``dt``."""
    acc = acc_dtype(dt)
    return (t.to(acc) * scale.to(acc)).to(dt)


@torch.no_grad()
def fold_scales(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict (``x_scale``, ``y_scale``, ``threshold`` and the parameters) -> a copy that computes the same
    function on raw activations with both scales 1 (see the module docstring). fp64 arithmetic, dtypes kept."""
    sx, sy = state["x_scale"].double(), state["y_scale"].double()
    sd = {k: v.detach().clone() for k, v in state.items()}
    factors = [(n, sx / sy) for n in _BY_SX_OVER_SY] + [(n, 1 / sy) for n in _BY_INV_SY]
    for name, factor in factors:
        if name in sd:  # W_skip only with the skip connection
            sd[name] = (sd[name].double() * factor).to(sd[name].dtype)
    sd["threshold"] = (sd["threshold"].double() / sy).float()
    sd["x_scale"] = torch.ones_like(sd["x_scale"])
    sd["y_scale"] = torch.ones_like(sd["y_scale"])
    return sd
