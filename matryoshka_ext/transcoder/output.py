"""What one training forward returns (``MatryoshkaTranscoder.forward``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..sparse import SparseActs


@dataclass
class TranscoderOutput:
    """Result of ``MatryoshkaTranscoder.forward`` on a batch of N tokens with m prefixes.

    loss      []          sum_i w_i * mse_i + aux_loss (differentiable)
    mse       [m]  fp32   per-prefix mean squared error (scaled units; skip term included; differentiable)
    fvu       [m]  fp32   per-prefix fraction of variance unexplained (detached)
    aux_loss  []   fp32   aux_penalty * AuxK MSE (differentiable; 0 when no latent is dead)
    l0        []   fp32   mean number of positive activations per token
    prefix_l0 [m]  fp32   the same, counting only latents of prefix i
    recon     [N, d_out]  full-prefix reconstruction (skip term included) in the caller's (raw) units (detached);
                          decoded on first access unless AuxK already needed it (the step itself does not)
    acts      SparseActs  selected activations (detached, scaled units)
    num_dead  []   int64  latents dead before this step
    """

    loss: torch.Tensor
    mse: torch.Tensor
    fvu: torch.Tensor
    aux_loss: torch.Tensor
    l0: torch.Tensor
    prefix_l0: torch.Tensor
    recon_fn: Callable[[], torch.Tensor] = field(repr=False)
    acts: SparseActs
    num_dead: torch.Tensor
    _recon: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def recon(self) -> torch.Tensor:
        if self._recon is None:
            self._recon = self.recon_fn()
        return self._recon
