"""SparseActs: the CSR container every op exchanges (selected latents per row)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseActs:
    """Sparse activations of N rows over F latents, in CSR form.

    values      [nnz]   activations (differentiable); entries may hold 0.0 when a row had fewer positives than k
    indices     [nnz]   int64 latent ids, ascending within each row
    row_offsets [N+1]   int64; row n owns entries row_offsets[n]:row_offsets[n+1]
    num_latents F
    """

    values: torch.Tensor
    indices: torch.Tensor
    row_offsets: torch.Tensor
    num_latents: int

    @property
    def num_rows(self) -> int:
        return self.row_offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.num_latents)

    def row_ids(self) -> torch.Tensor:
        """[nnz] int64 row of each entry."""
        counts = self.row_offsets[1:] - self.row_offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.num_rows, device=counts.device), counts)

    def to_dense(self) -> torch.Tensor:
        """[N, F] dense activations (differentiable through `values`); checks the CSR first (`validate`)."""
        self.validate()
        dense = self.values.new_zeros(self.num_rows, self.num_latents)
        return dense.index_put((self.row_ids(), self.indices), self.values)

    def l0(self) -> torch.Tensor:
        """[N] number of strictly positive activations per row (stored zeros don't count)."""
        return torch.bincount(self.row_ids()[self.values.detach() > 0], minlength=self.num_rows)

    def detach(self) -> SparseActs:
        return SparseActs(self.values.detach(), self.indices, self.row_offsets, self.num_latents)

    def validate(self) -> SparseActs:
        """Check the CSR structure (one device sync on GPU); raises ValueError / TypeError naming the field."""
        v, i, r = self.values, self.indices, self.row_offsets
        for name, t in (("values", v), ("indices", i), ("row_offsets", r)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"acts.{name} must be a torch.Tensor, got {type(t).__name__}")
        if isinstance(self.num_latents, bool) or not hasattr(self.num_latents, "__index__"):
            raise TypeError(f"acts.num_latents must be an int, got {type(self.num_latents).__name__}")
        if v.dim() != 1:
            raise ValueError(f"acts.values must be 1-D, got shape {tuple(v.shape)}")
        if i.dim() != 1 or i.numel() != v.numel():
            raise ValueError(f"acts.indices must be 1-D with {v.numel()} entries, got {tuple(i.shape)}")
        if i.dtype != torch.int64 or r.dtype != torch.int64:
            raise TypeError("acts.indices and acts.row_offsets must be int64")
        if r.dim() != 1 or r.numel() < 2:
            raise ValueError(f"acts.row_offsets must be 1-D with N+1 >= 2 entries, got {tuple(r.shape)}")
        if not (v.device == i.device == r.device):
            raise ValueError("acts.values, acts.indices and acts.row_offsets must be on one device")
        if self.num_latents <= 0:
            raise ValueError(f"acts.num_latents must be positive, got {self.num_latents}")
        if v.device.type == "meta":  # shapes only: nothing to read
            return self
        # Content checks, gathered into one tensor so a GPU pays one sync.
        idx = i if i.numel() else i.new_zeros(1)
        bad_offsets = (r[0] != 0) | (r[-1] != v.numel()) | (r[1:] < r[:-1]).any()
        bad_indices = (idx.min() < 0) | (idx.max() >= self.num_latents)
        bad_offsets, bad_indices = torch.stack([bad_offsets, bad_indices]).tolist()
        if bad_offsets:
            raise ValueError("acts.row_offsets must start at 0, be non-decreasing and end at nnz")
        if bad_indices:
            raise ValueError(f"acts.indices out of range [0, {self.num_latents})")
        return self

    @staticmethod
    def from_dense(dense: torch.Tensor) -> SparseActs:
        """Build from a dense [N, F] tensor, keeping its nonzero entries (row-major, so indices ascend)."""
        if dense.dim() != 2:
            raise ValueError(f"dense must be 2-D [N, F], got shape {tuple(dense.shape)}")
        rows, cols = dense.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=dense.shape[0])
        offsets = torch.zeros(dense.shape[0] + 1, dtype=torch.int64, device=dense.device)
        offsets[1:] = counts.cumsum(0)
        return SparseActs(dense[rows, cols], cols, offsets, dense.shape[1])
