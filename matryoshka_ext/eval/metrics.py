"""Streaming evaluation accumulators: reconstruction fidelity per prefix, and sparsity / latent usage.

Definitions (all over the evaluated tokens, BOS and pad positions excluded upstream; n tokens, d = d_out):

    MSE_i       = sum_{n,d} (y_nd - r_ind)^2 / (n d)
    FVU_i       = sum_{n,d} (y_nd - r_ind)^2 / sum_d sum_n (y_nd - mean_n y_d)^2
                  (per-dimension variance of the target, summed over dimensions: NOT one global variance)
    EV_i        = 1 - FVU_i                      explained variance
    NMSE_i      = sum (y - r_i)^2 / sum y^2      error relative to the raw (uncentred) target energy
    cosine_i    = mean_n cos(y_n, r_in)          (a zero vector has cosine 0)
    L0          = number of latents with activation > 0 on a token (prefix i: among latents [0, e_i))
    density_f   = fraction of evaluated tokens on which latent f is > 0
    dead        = latents with density 0 over the evaluated tokens ("never fired in this pass"; with n tokens a
                  latent firing less often than ~1/n is indistinguishable from dead)
    dense       = latents with density > ``dense_threshold`` (default 0.1, i.e. fires on > 10 % of tokens)

Sums are accumulated in float64; the target's per-dimension mean and sum of squared deviations use Chan's
parallel update (no catastrophic cancellation from E[y^2] - E[y]^2 at Gemma's ~3,000 output norms).
Nothing holds more than one batch of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..sparse import SparseActs

DENSITY_BINS = [-math.inf] + [float(x) for x in range(-7, 1)]  # log10 edges: 1e-7 .. 1e0


class FidelityStats:
    """Per-prefix reconstruction metrics of m prefixes against a target of width d_out (see module docstring)."""

    def __init__(self, num_prefixes: int, d_out: int, device: torch.device | str = "cpu") -> None:
        self.m, self.d = int(num_prefixes), int(d_out)
        f64 = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.mean = torch.zeros(self.d, **f64)  # running per-dimension mean of y
        self.m2 = torch.zeros(self.d, **f64)  # running per-dimension sum of squared deviations of y
        self.sse = torch.zeros(self.m, **f64)  # sum (y - r_i)^2
        self.sum_sq = torch.zeros((), **f64)  # sum y^2
        self.cos_sum = torch.zeros(self.m, **f64)

    @torch.no_grad()
    def update(self, y: torch.Tensor, recon: torch.Tensor) -> None:
        """y [N, d_out], recon [m, N, d_out] (any float dtype; promoted to float64 per prefix)."""
        if y.dim() != 2 or y.shape[1] != self.d:
            raise ValueError(f"y must be [N, {self.d}], got {tuple(y.shape)}")
        if recon.shape != (self.m, *y.shape):
            raise ValueError(f"recon must be [{self.m}, {y.shape[0]}, {self.d}], got {tuple(recon.shape)}")
        nb = y.shape[0]
        if nb == 0:
            return
        y64 = y.to(self.mean.device, torch.float64)
        y_norm = y64.norm(dim=1)
        for i in range(self.m):  # one prefix at a time: keeps the float64 copy at [N, d]
            r = recon[i].to(self.mean.device, torch.float64)
            self.sse[i] += (r - y64).pow(2).sum()
            denom = (r.norm(dim=1) * y_norm).clamp_min(1e-300)
            self.cos_sum[i] += ((r * y64).sum(1) / denom).sum()
        self.sum_sq += y64.pow(2).sum()
        bmean = y64.mean(0)
        bm2 = (y64 - bmean).pow(2).sum(0)
        total = self.n + nb
        delta = bmean - self.mean
        self.mean += delta * (nb / total)
        self.m2 += bm2 + delta.pow(2) * (self.n * nb / total)
        self.n = total

    def result(self) -> dict[str, list[float] | float | int]:
        """{"n_tokens", "mse", "fvu", "explained_variance", "nmse", "cosine", "target_variance"} (lists per prefix)."""
        n = max(self.n, 1)
        var_sum = self.m2.sum()
        fvu = (self.sse / var_sum).tolist() if var_sum > 0 else [math.nan] * self.m
        return {
            "n_tokens": self.n,
            "mse": (self.sse / (n * self.d)).tolist(),
            "fvu": fvu,
            "explained_variance": [1.0 - f for f in fvu],
            "nmse": (self.sse / self.sum_sq).tolist() if self.sum_sq > 0 else [math.nan] * self.m,
            "cosine": (self.cos_sum / n).tolist(),
            "target_variance": float(var_sum / n),  # sum_d Var(y_d)
        }


class SparsityStats:
    """Latent usage over a fresh pass: L0 (mean, median, histogram; per prefix), density, dead / dense latents."""

    def __init__(
        self,
        num_latents: int,
        prefix_ends: Sequence[int] | None = None,
        dense_threshold: float = 0.1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.F = int(num_latents)
        self.ends = list(prefix_ends) if prefix_ends else [self.F]
        if self.ends[-1] != self.F:
            raise ValueError(f"prefix_ends must end at num_latents={self.F}, got {self.ends}")
        self.dense_threshold = float(dense_threshold)
        self.device = torch.device(device)
        self.n = 0
        self.fire_count = torch.zeros(self.F, dtype=torch.int64, device=self.device)
        self.act_sum = torch.zeros(self.F, dtype=torch.float64, device=self.device)
        self.act_max = torch.zeros(self.F, dtype=torch.float32, device=self.device)
        # L0 histograms per prefix (index = L0 value), grown on demand so memory follows the largest L0 seen
        self.l0_hist = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in self.ends]

    @torch.no_grad()
    def update(self, acts: SparseActs) -> None:
        """Add one batch of activations (N tokens)."""
        if acts.num_latents != self.F:
            raise ValueError(f"acts have {acts.num_latents} latents, expected {self.F}")
        N = acts.num_rows
        vals = acts.values.detach().to(self.device)
        pos = vals > 0
        idx = acts.indices.to(self.device)[pos]
        v = vals[pos].float()
        rows = acts.row_ids().to(self.device)[pos]
        self.fire_count += torch.bincount(idx, minlength=self.F)
        self.act_sum.index_add_(0, idx, v.double())
        self.act_max.scatter_reduce_(0, idx, v, reduce="amax")
        for i, e in enumerate(self.ends):
            sel = rows if e == self.F else rows[idx < e]
            per_row = torch.bincount(sel, minlength=N)
            h = torch.bincount(per_row)
            if h.numel() > self.l0_hist[i].numel():
                grown = torch.zeros(h.numel(), dtype=torch.int64, device=self.device)
                grown[: self.l0_hist[i].numel()] = self.l0_hist[i]
                self.l0_hist[i] = grown
            self.l0_hist[i][: h.numel()] += h
        self.n += N

    def density(self) -> torch.Tensor:
        """[F] float64 fraction of tokens each latent fired on."""
        return self.fire_count.double() / max(self.n, 1)

    def result(self) -> dict[str, Any]:
        """JSON-able summary: L0 stats per prefix, dead/dense counts (total and per group), density histogram."""
        dens = self.density().cpu()
        fc = self.fire_count.cpu()
        dead = fc == 0
        dense = dens > self.dense_threshold
        starts = [0] + self.ends[:-1]
        groups = []
        for g, (a, b) in enumerate(zip(starts, self.ends)):
            groups.append(
                {
                    "group": g + 1,
                    "latents": [a, b],
                    "dead": int(dead[a:b].sum()),
                    "dense": int(dense[a:b].sum()),
                    "mean_density": float(dens[a:b].mean()),
                    "l0_mean": float(fc[a:b].sum()) / max(self.n, 1),  # contribution of this group to L0
                }
            )
        l0_mean, l0_median = [], []
        for h in self.l0_hist:
            mean, median = _hist_mean_median(h.cpu())
            l0_mean.append(mean)
            l0_median.append(median)
        live = dens[~dead]
        log_d = torch.log10(live.clamp_min(1e-300))
        edges = torch.tensor(DENSITY_BINS[1:], dtype=torch.float64)
        counts = torch.bincount(torch.bucketize(log_d, edges, right=True), minlength=len(edges) + 1)
        mean_act = torch.where(fc > 0, self.act_sum.cpu() / fc.clamp_min(1), torch.zeros_like(self.act_sum.cpu()))
        return {
            "n_tokens": self.n,
            "l0_mean": l0_mean,
            "l0_median": l0_median,
            "l0_hist": self.l0_hist[-1].cpu().tolist(),  # full dictionary: tokens with L0 == index
            "dead": int(dead.sum()),
            "dead_fraction": float(dead.double().mean()),
            "dense": int(dense.sum()),
            "dense_fraction": float(dense.double().mean()),
            "dense_threshold": self.dense_threshold,
            "max_density": float(dens.max()) if self.F else 0.0,  # the densest latent's firing rate
            "groups": groups,
            "density_hist": {
                "log10_edges": [None if math.isinf(e) else e for e in DENSITY_BINS],
                "counts": counts.tolist(),  # live latents per log10-density bin (bin 0: density < 1e-7)
                "dead": int(dead.sum()),
            },
            "mean_activation_when_active": float(mean_act[~dead].mean()) if bool((~dead).any()) else 0.0,
            "max_activation": float(self.act_max.max()) if self.F else 0.0,
        }


def _hist_mean_median(h: torch.Tensor) -> tuple[float, float]:
    """Mean and median of integer values given their histogram h (h[v] = count of value v)."""
    total = int(h.sum())
    if total == 0:
        return math.nan, math.nan
    values = torch.arange(h.numel(), dtype=torch.float64)
    mean = float((values * h.double()).sum() / total)
    cum = torch.cumsum(h, 0)
    # median of an even count = mean of the two middle values (numpy's convention)
    lo = int(torch.searchsorted(cum, torch.tensor((total + 1) // 2), right=False))
    hi = int(torch.searchsorted(cum, torch.tensor(total // 2 + 1), right=False))
    return mean, (lo + hi) / 2
