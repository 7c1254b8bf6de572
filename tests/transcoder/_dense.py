"""Shared by the transcoder tests: a small model, random data, and the whole training objective written out densely
(independent of the sparse kernels), with the skip term when the model has one."""

from __future__ import annotations

import torch

from matryoshka_ext.config import TranscoderConfig
from matryoshka_ext.transcoder import MatryoshkaTranscoder

N, D_IN, D_OUT = 48, 16, 12  # d_in != d_out pins every weight's orientation


def small_model(dtype: str = "float64", selection: str = "batch", **kw) -> MatryoshkaTranscoder:
    """F = 64 in groups 8/8/16/32, k = 4, aux_k = 8, dead after 50 tokens; ``kw`` overrides."""
    base = dict(d_in=D_IN, d_out=D_OUT, dict_size=64, group_sizes=[8, 8, 16, 32], k=4, aux_k=8, dead_tokens=50)
    base.update(kw)
    return MatryoshkaTranscoder(TranscoderConfig(dtype=dtype, selection=selection, **base))


def random_data(seed: int, dtype=torch.float64, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, D_IN] (scale 5), y [n, D_OUT] (scale 3, mean 1), fresh from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=dtype) * 5
    y = torch.randn(n, D_OUT, generator=g, dtype=dtype) * 3 + 1
    return x, y


def dense_objective(m: MatryoshkaTranscoder, x: torch.Tensor, y: torch.Tensor, dead: torch.Tensor):
    """sum_i w_i mean((A[:, :e_i] W_dec[:e_i] + b_dec + xs W_skip - ys)^2)
    + aux_penalty * mean((topk_dead(relu(pre)) W_dec[dead] - sg(ys - r_full))^2), on copies of m's parameters.

    Dense pre-activations, selection by sorting, one dense decode per prefix. Returns (loss, per-prefix mse [m],
    per-prefix fvu [m], aux, gradients by parameter name, selection mask [N, F], full reconstruction [N, d_out]).
    """
    cfg = m.cfg
    P = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    xs, ys = x * m.x_scale.double(), y * m.y_scale.double()
    pre = xs @ P["W_enc"] + P["b_enc"]
    act = torch.relu(pre)
    n, f = act.shape
    if cfg.selection == "batch":
        order = torch.sort(act.detach().flatten(), descending=True, stable=True).indices[: cfg.k * n]
        mask = torch.zeros(n * f, dtype=torch.bool)
        mask[order] = True
        mask = mask.view(n, f)
    else:
        order = torch.sort(act.detach(), dim=1, descending=True, stable=True).indices[:, : cfg.k]
        mask = torch.zeros(n, f, dtype=torch.bool).scatter_(1, order, True)
    A = act * mask
    skip = xs @ P["W_skip"] if "W_skip" in P else 0.0
    recons = [A[:, :e] @ P["W_dec"][:e] + P["b_dec"] + skip for e in cfg.group_ends]
    mses = torch.stack([((r - ys) ** 2).mean() for r in recons])
    w = torch.tensor(cfg.weights, dtype=torch.float64)
    var = ((ys - ys.mean(0)) ** 2).sum()
    fvu = torch.stack([((r - ys) ** 2).sum().detach() / var for r in recons])
    aux = torch.zeros((), dtype=torch.float64)
    if dead.any():
        residual = (ys - recons[-1]).detach()
        pd = torch.relu(pre[:, dead])
        kk = min(cfg.aux_k, int(dead.sum()))
        top = torch.sort(pd.detach(), dim=1, descending=True, stable=True).indices[:, :kk]
        M = torch.zeros_like(pd, dtype=torch.bool).scatter_(1, top, True)
        aux = cfg.aux_penalty * (((pd * M) @ P["W_dec"][dead] - residual) ** 2).mean()
    loss = (w * mses).sum() + aux
    loss.backward()
    return loss, mses, fvu, aux, {k: v.grad for k, v in P.items()}, mask, recons[-1].detach()
