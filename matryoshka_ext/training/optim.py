"""The optimiser: Adam, with torch's fused kernel where it exists for the device."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Adam:
    """Adam(fused=True) when torch supports it for these parameters' device and dtype, else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # fused unsupported for this device / dtype
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
