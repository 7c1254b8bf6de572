"""Interpretability statistics, each named for exactly what it measures.

* ``decoder_redundancy``: for every latent, the largest cosine similarity between its decoder direction and any
  *other* latent's, and which latent that is. High values mean near-duplicate output directions; they say
  nothing about whether the two latents fire on the same inputs.
* ``CoactivationStats``: among the first ``max_latents`` latents (the earliest Matryoshka groups, where the
  most general latents live), how often pairs fire on the same token. Reported per latent as the largest
  Jaccard index |A and B| / |A or B| with another latent, over the evaluated tokens.
* per-group density lives in ``metrics.SparsityStats`` (mean density, dead and dense counts per group).
"""

from __future__ import annotations

import torch

from ..sparse import SparseActs


@torch.no_grad()
def decoder_redundancy(W_dec: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """W_dec [F, d] -> (max cosine to another latent [F] float32, that latent's index [F] int64).

    Computed in row chunks of ``chunk`` x F similarities (never F x F at once). Zero rows get cosine 0.
    """
    F = W_dec.shape[0]
    W = W_dec.float()
    Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.empty(F, device=W.device)
    partner = torch.empty(F, dtype=torch.int64, device=W.device)
    if F == 1:
        return torch.zeros(1), torch.full((1,), -1, dtype=torch.int64)
    for s in range(0, F, chunk):
        sims = Wn[s : s + chunk] @ Wn.T  # [c, F]
        rows = torch.arange(sims.shape[0], device=W.device)
        sims[rows, rows + s] = float("-inf")  # not itself
        v, i = sims.max(dim=1)
        best[s : s + chunk], partner[s : s + chunk] = v, i
    return best.cpu(), partner.cpu()


class CoactivationStats:
    """Pairwise co-firing counts among latents [0, max_latents) (dense [M, M] float64 counts)."""

    def __init__(self, num_latents: int, max_latents: int = 1024, device: torch.device | str = "cpu") -> None:
        self.M = min(int(num_latents), int(max_latents))
        self.counts = torch.zeros(self.M, self.M, dtype=torch.float64, device=device)
        self.n = 0

    @torch.no_grad()
    def update(self, acts: SparseActs) -> None:
        """Add the co-firing of one batch: counts += B^T B with B [N, M] the 0/1 firing matrix."""
        dev = self.counts.device
        pos = acts.values.detach() > 0
        idx = acts.indices[pos].to(dev)
        rows = acts.row_ids()[pos].to(dev)
        sel = idx < self.M
        B = torch.zeros(acts.num_rows, self.M, dtype=torch.float32, device=dev)
        B[rows[sel], idx[sel]] = 1.0
        self.counts += (B.T @ B).double()  # exact: integer counts below 2^24 per batch
        self.n += acts.num_rows

    def max_jaccard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([M] largest Jaccard index with another latent (0 if it never fired), [M] that latent or -1)."""
        c = self.counts
        fires = c.diagonal()
        union = fires[:, None] + fires[None, :] - c
        jac = torch.where(union > 0, c / union.clamp_min(1), torch.zeros_like(c))
        jac.fill_diagonal_(-1.0)
        v, i = jac.max(dim=1) if self.M > 1 else (torch.zeros(self.M, dtype=c.dtype), torch.zeros(self.M))
        v = v.clamp_min(0)
        i = torch.where(v > 0, i.long(), torch.full_like(i.long(), -1))
        return v.float().cpu(), i.cpu()
